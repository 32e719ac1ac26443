//! The wire protocol: every message a client and the server exchange over `/ws`.
//!
//! Messages are JSON objects tagged by `"type"` (snake_case). The protocol version is
//! [`PROTOCOL_VERSION`]; the server announces it in `welcome` and a client may state the version
//! it speaks in `join`. `docs/signaling.md` shows every message with an example.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, SignalError};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest accepted text frame, in bytes (64 KiB). Larger frames get `too_large`.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest accepted room name, display name or SDP-independent string field.
pub const MAX_NAME_CHARS: usize = 64;

/// What a participant is on the call. The recorder puts `agent` on the left channel and every
/// other role on the right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Internal side: an employee handling the call.
    Agent,
    /// External side: the customer in a browser.
    #[default]
    Customer,
    /// External side: a phone leg bridged by the PBX.
    Pstn,
    /// Internal listener (e.g. a supervisor).
    Supervisor,
    /// Anyone else; treated as the external side.
    Guest,
    /// The server's own audio source (consent beeps, the recording announcement). Only the
    /// server uses it; a client may not join with it.
    System,
}

impl Role {
    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Customer => "customer",
            Role::Pstn => "pstn",
            Role::Supervisor => "supervisor",
            Role::Guest => "guest",
            Role::System => "system",
        }
    }
}

/// Which of a participant's two peer connections a message is about. Each participant has a
/// *publish* connection (the client offers, the server answers) and a *subscribe* connection (the
/// server offers, the client answers); since each side is always offerer on one of them,
/// renegotiation can never glare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcTarget {
    Publish,
    Subscribe,
}

/// An ICE candidate as browsers produce it (`RTCIceCandidateInit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, rename = "sdpMid", skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(
        default,
        rename = "usernameFragment",
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// A participant as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Stable id; also the media stream id of this participant's audio on subscribers' side,
    /// and the last segment of its WHIP resource URL.
    pub id: String,
    pub display_name: String,
    pub role: Role,
    /// Whether the participant currently publishes audio.
    pub publishing: bool,
}

/// One participant's audio level in an `audio_levels` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Level {
    pub participant_id: String,
    /// 0.0 (silence) ..= 1.0 (full scale), from the RFC 6464 level (-127..0 dBov).
    pub level: f32,
}

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Enter a room (created on first join).
    Join {
        room: String,
        display_name: String,
        /// What the participant is; absent means unknown (the recorder then puts the first
        /// joiner on the left channel and everyone else on the right).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        /// Join token (required when the server has auth on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Protocol version the client speaks; defaults to the current one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<u32>,
        /// Record this room (only when this join creates it); default: server config.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record: Option<bool>,
    },
    /// Start or stop recording the room mid-call.
    SetRecording { enabled: bool },
    /// Offer for the publish connection (client -> server media).
    Publish { sdp: String },
    /// Answer to the server's latest `subscribe_offer`.
    SubscribeAnswer { sdp: String, revision: u64 },
    /// A trickled ICE candidate for one of the two connections; `candidate: null` ends trickling.
    IceCandidate {
        target: PcTarget,
        #[serde(default)]
        candidate: Option<IceCandidate>,
    },
    /// Leave the room; the socket stays open and may join again.
    Leave,
    /// Keepalive; answered by `pong` with the same id.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

impl ClientMessage {
    /// The wire name of this message's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Publish { .. } => "publish",
            ClientMessage::SubscribeAnswer { .. } => "subscribe_answer",
            ClientMessage::IceCandidate { .. } => "ice_candidate",
            ClientMessage::Leave => "leave",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::SetRecording { .. } => "set_recording",
        }
    }
}

/// Every `type` a client may send.
pub const CLIENT_TYPES: &[&str] = &[
    "join",
    "publish",
    "subscribe_answer",
    "ice_candidate",
    "leave",
    "ping",
    "set_recording",
];

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message on every connection.
    Welcome {
        protocol: u32,
        server: String,
        /// Seconds between keepalives the server expects (a `ping` or any message).
        keepalive_secs: u64,
    },
    /// The join succeeded.
    Joined {
        room: String,
        participant_id: String,
        /// Everyone else already in the room.
        participants: Vec<ParticipantInfo>,
        /// ICE servers the client should use (may be empty on loopback deployments).
        #[serde(default)]
        ice_servers: Vec<IceServer>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    /// A participant started or stopped publishing.
    ParticipantUpdated {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
        reason: LeaveReason,
    },
    /// Answer to `publish`.
    PublishAnswer {
        sdp: String,
    },
    /// Offer for the subscribe connection; answer with `subscribe_answer` carrying `revision`.
    /// Each remote participant's audio arrives as its own track whose stream id is the
    /// participant id; `tracks` lists them in the order of the offer.
    SubscribeOffer {
        sdp: String,
        revision: u64,
        tracks: Vec<TrackInfo>,
    },
    IceCandidate {
        target: PcTarget,
        candidate: Option<IceCandidate>,
    },
    /// Periodic audio levels of everyone publishing, with the current active speaker.
    AudioLevels {
        levels: Vec<Level>,
        active_speaker: Option<String>,
    },
    /// Sent when the loudest participant changes.
    ActiveSpeaker {
        participant_id: Option<String>,
    },
    /// Confirms `leave`.
    Left {
        reason: LeaveReason,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The room's recording started: everyone in the room hears a notice and periodic beeps.
    RecordingStarted {
        recording_id: String,
    },
    /// The room's recording stopped (`requested`, `room_closed`, `failed`, `shutdown`).
    RecordingStopped {
        recording_id: String,
        reason: String,
    },
    /// A phone leg in the room pressed a key (RFC 4733 telephone-event or SIP INFO): `digit`
    /// is one of `0-9`, `*`, `#`, `A-D`.
    Dtmf {
        participant_id: String,
        digit: String,
    },
    /// Progress of the room's outbound phone call: `dialing`, `ringing`, `early_media`,
    /// `answered`, `busy`, `no_answer`, `failed` or `cancelled`, with the SIP status code
    /// when there is one.
    PstnStatus {
        status: String,
        code: Option<u16>,
    },
    /// The server is closing this session (shutdown, kicked, ...).
    Bye {
        reason: LeaveReason,
    },
    Error(ErrorBody),
}

/// Body of an `error` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The `type` of the message that caused it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
}

/// A remote audio track in a subscribe offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub participant_id: String,
    pub stream_id: String,
    pub track_id: String,
}

/// An ICE server entry (`RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// Sent `leave` (or DELETE on the WHIP resource).
    Left,
    /// The WebSocket closed.
    Disconnected,
    /// ICE/DTLS failed or media timed out.
    MediaTimeout,
    /// No keepalive within the timeout.
    KeepaliveTimeout,
    /// The server is shutting down.
    ServerShutdown,
    /// Removed by the server (e.g. call ended).
    Kicked,
    /// The call was ended (call-end).
    CallEnded,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::MediaTimeout => "media_timeout",
            LeaveReason::KeepaliveTimeout => "keepalive_timeout",
            LeaveReason::ServerShutdown => "server_shutdown",
            LeaveReason::Kicked => "kicked",
            LeaveReason::CallEnded => "call_ended",
        }
    }
}

impl ServerMessage {
    /// An error reply.
    pub fn error(err: &SignalError) -> ServerMessage {
        ServerMessage::Error(ErrorBody {
            code: err.code,
            message: err.message.clone(),
            in_reply_to: err.in_reply_to.clone(),
        })
    }

    /// Serialise to a JSON text frame.
    pub fn to_json(&self) -> String {
        // Serialising these plain data types cannot fail (no maps with non-string keys, no
        // custom Serialize impls that error).
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialisation failed"}"#.to_string()
        })
    }
}

/// Parse one text frame from a client, with a typed error for everything that is not a valid
/// message: too large, not JSON, not an object, no or unknown `type`, wrong or missing fields,
/// and field values out of bounds.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, SignalError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(SignalError::new(
            ErrorCode::TooLarge,
            format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                text.len()
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| SignalError::new(ErrorCode::Malformed, format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| SignalError::new(ErrorCode::Malformed, "a message must be a JSON object"))?;
    let ty = match obj.get("type") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(SignalError::new(
                ErrorCode::Malformed,
                "field `type` must be a string",
            ));
        }
        None => {
            return Err(SignalError::new(
                ErrorCode::Malformed,
                "missing field `type`",
            ));
        }
    };
    if !CLIENT_TYPES.contains(&ty.as_str()) {
        let mut shown: String = ty.chars().take(32).collect();
        if shown.len() < ty.len() {
            shown.push('…');
        }
        return Err(SignalError::new(
            ErrorCode::UnknownType,
            format!("unknown message type `{shown}`"),
        ));
    }
    let msg: ClientMessage = serde_json::from_value(value).map_err(|e| {
        SignalError::new(ErrorCode::InvalidField, format!("bad `{ty}` message: {e}")).reply_to(&ty)
    })?;
    validate(&msg).map_err(|e| e.reply_to(&ty))?;
    Ok(msg)
}

/// Field-level checks serde cannot express.
fn validate(msg: &ClientMessage) -> Result<(), SignalError> {
    match msg {
        ClientMessage::Join {
            room,
            display_name,
            protocol,
            role,
            ..
        } => {
            validate_room_name(room)?;
            if *role == Some(Role::System) {
                return Err(SignalError::new(
                    ErrorCode::InvalidField,
                    "role `system` is reserved for the server",
                ));
            }
            let dn = display_name.trim();
            if dn.is_empty() || dn.chars().count() > MAX_NAME_CHARS {
                return Err(SignalError::new(
                    ErrorCode::InvalidField,
                    format!("display_name must be 1..={MAX_NAME_CHARS} characters"),
                ));
            }
            if dn.chars().any(char::is_control) {
                return Err(SignalError::new(
                    ErrorCode::InvalidField,
                    "display_name must not contain control characters",
                ));
            }
            if let Some(v) = protocol
                && *v != PROTOCOL_VERSION
            {
                return Err(SignalError::new(
                    ErrorCode::UnsupportedVersion,
                    format!("protocol {v} is not supported; this server speaks {PROTOCOL_VERSION}"),
                ));
            }
        }
        ClientMessage::Publish { sdp } | ClientMessage::SubscribeAnswer { sdp, .. } => {
            if sdp.trim().is_empty() {
                return Err(SignalError::new(ErrorCode::BadSdp, "sdp is empty"));
            }
            if !sdp.trim_start().starts_with("v=") {
                return Err(SignalError::new(
                    ErrorCode::BadSdp,
                    "sdp does not start with a `v=` line",
                ));
            }
        }
        ClientMessage::IceCandidate {
            candidate: Some(c), ..
        } if c.candidate.len() > 1024 => {
            return Err(SignalError::new(
                ErrorCode::InvalidField,
                "candidate is longer than 1024 bytes",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Room names: 1..=64 characters of `A-Z a-z 0-9 . _ -`.
pub fn validate_room_name(room: &str) -> Result<(), SignalError> {
    if room.is_empty()
        || room.len() > MAX_NAME_CHARS
        || !room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(SignalError::new(
            ErrorCode::InvalidField,
            format!("room must be 1..={MAX_NAME_CHARS} characters of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_join_with_defaults() {
        let m = parse_client_message(r#"{"type":"join","room":"r1","display_name":"Ann"}"#)
            .expect("valid join");
        assert_eq!(
            m,
            ClientMessage::Join {
                room: "r1".into(),
                display_name: "Ann".into(),
                role: None,
                token: None,
                protocol: None,
                record: None,
            }
        );
    }

    #[test]
    fn roundtrips_every_client_message() {
        let msgs = vec![
            ClientMessage::Join {
                room: "a".into(),
                display_name: "b".into(),
                role: Some(Role::Agent),
                token: Some("t".into()),
                protocol: Some(1),
                record: Some(false),
            },
            ClientMessage::SetRecording { enabled: true },
            ClientMessage::Publish {
                sdp: "v=0\r\n".into(),
            },
            ClientMessage::SubscribeAnswer {
                sdp: "v=0\r\n".into(),
                revision: 3,
            },
            ClientMessage::IceCandidate {
                target: PcTarget::Subscribe,
                candidate: Some(IceCandidate {
                    candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                    username_fragment: None,
                }),
            },
            ClientMessage::IceCandidate {
                target: PcTarget::Publish,
                candidate: None,
            },
            ClientMessage::Leave,
            ClientMessage::Ping { id: Some(7) },
        ];
        for m in msgs {
            let text = serde_json::to_string(&m).expect("serialise");
            assert_eq!(
                parse_client_message(&text).expect("parse back"),
                m,
                "{text}"
            );
            assert!(CLIENT_TYPES.contains(&m.type_name()));
        }
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        let big = format!(
            r#"{{"type":"publish","sdp":"v=0{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(
            parse_client_message(&big).unwrap_err().code,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn malformed_inputs_have_codes() {
        let cases: &[(&str, ErrorCode)] = &[
            ("", ErrorCode::Malformed),
            ("{", ErrorCode::Malformed),
            ("[1,2]", ErrorCode::Malformed),
            ("\"join\"", ErrorCode::Malformed),
            (r#"{"room":"x"}"#, ErrorCode::Malformed),
            (r#"{"type":5}"#, ErrorCode::Malformed),
            (r#"{"type":"dance"}"#, ErrorCode::UnknownType),
            (r#"{"type":"join"}"#, ErrorCode::InvalidField),
            (
                r#"{"type":"join","room":"a b","display_name":"x"}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"type":"join","room":"ok","display_name":""}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"type":"join","room":"ok","display_name":"x","role":"king"}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"type":"join","room":"ok","display_name":"x","protocol":9}"#,
                ErrorCode::UnsupportedVersion,
            ),
            (
                r#"{"type":"join","room":"ok","display_name":"x","extra":1}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"type":"join","room":"ok","display_name":"x","role":"system"}"#,
                ErrorCode::InvalidField,
            ),
            (r#"{"type":"publish","sdp":""}"#, ErrorCode::BadSdp),
            (r#"{"type":"publish","sdp":"hello"}"#, ErrorCode::BadSdp),
            (r#"{"type":"publish","sdp":7}"#, ErrorCode::InvalidField),
            (
                r#"{"type":"ice_candidate","target":"sideways","candidate":null}"#,
                ErrorCode::InvalidField,
            ),
            (r#"{"type":"ping","id":-1}"#, ErrorCode::InvalidField),
        ];
        for (text, code) in cases {
            let err = parse_client_message(text).expect_err(text);
            assert_eq!(err.code, *code, "{text}: {err}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn unknown_type_is_not_echoed_in_full() {
        let long = "z".repeat(500);
        let err = parse_client_message(&format!(r#"{{"type":"{long}"}}"#)).unwrap_err();
        assert!(err.message.len() < 100);
    }

    #[test]
    fn server_messages_serialise_with_type_tag() {
        let m = ServerMessage::error(&SignalError::new(ErrorCode::OutOfOrder, "join first"));
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).expect("json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "out_of_order");
        let m = ServerMessage::ParticipantLeft {
            participant_id: "p".into(),
            reason: LeaveReason::MediaTimeout,
        };
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).expect("json");
        assert_eq!(v["type"], "participant_left");
        assert_eq!(v["reason"], "media_timeout");
    }
}
