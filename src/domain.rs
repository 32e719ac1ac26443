//! The call domain's vocabulary: ids parsed once at the edge, and the enumerations the database
//! and the API spell as text, with their text forms here and nowhere else.
//!
//! Ids wrap [`Uuid`]; a string that is not one is refused where it enters (HTTP path, token,
//! media event) with [`BadId`], which callers log and count instead of dropping the write
//! silently.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A string that should have been an id and is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what} id")]
pub struct BadId {
    pub what: &'static str,
    pub value: String,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new_random() -> Self {
                $name(Uuid::new_v4())
            }
            pub fn uuid(&self) -> Uuid {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                Uuid::parse_str(s).map($name).map_err(|_| BadId {
                    what: $what,
                    value: s.chars().take(64).collect(),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                $name(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

uuid_id!(
    /// A row of `calls`.
    CallId,
    "call"
);
uuid_id!(
    /// A row of `call_recordings`.
    RecordingId,
    "recording"
);
uuid_id!(
    /// A row of `call_participants`: the media participant's id.
    ParticipantId,
    "participant"
);

/// The room a call owns (`call-<uuid>` for API calls; any valid room name for ad-hoc ones).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomName(pub String);

impl RoomName {
    /// The room of a call made through the API.
    pub fn for_call(id: CallId) -> RoomName {
        RoomName(format!("call-{}", id.0.simple()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RoomName {
    fn from(s: &str) -> Self {
        RoomName(s.to_string())
    }
}

/// Text enumerations: `as_str` is the one spelling (database, API, logs); `FromStr` refuses
/// anything else with the list of accepted values.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every text form, in declaration order.
            pub const TEXTS: &'static [&'static str] = &[$($text),+];
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "unknown {} `{}` (one of: {})",
                        $what,
                        s.chars().take(32).collect::<String>(),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// `calls.status`.
    CallStatus, "call status" {
        Created = "created",
        Active = "active",
        Ended = "ended",
    }
);

text_enum!(
    /// `calls.kind`.
    CallKind, "call kind" {
        Webrtc = "webrtc",
        Pstn = "pstn",
        Hybrid = "hybrid",
    }
);

text_enum!(
    /// `calls.direction`.
    Direction, "direction" {
        Inbound = "inbound",
        Outbound = "outbound",
        Internal = "internal",
    }
);

text_enum!(
    /// `calls.end_reason` as this server writes it.
    EndReason, "end reason" {
        /// The last participant left.
        Completed = "completed",
        /// call-end without a reason of its own.
        Hangup = "hangup",
        /// Nobody joined within `calls.abandon_after_secs`.
        Abandoned = "abandoned",
        /// The server stopped while the call was on.
        ServerShutdown = "server_shutdown",
        /// An outbound phone call: the callee was busy (486, 600).
        Busy = "busy",
        /// An outbound phone call was not answered within `sip.ring_timeout_secs` (or 408/480).
        NoAnswer = "no_answer",
        /// An outbound phone call failed (any other final response, or no trunk).
        Failed = "failed",
    }
);

text_enum!(
    /// `call_participants.kind`.
    ParticipantKind, "participant kind" {
        Browser = "browser",
        Pstn = "pstn",
        Whip = "whip",
    }
);

text_enum!(
    /// `call_participants.role` (the signaling protocol's roles without the server's own
    /// `system`).
    Role, "role" {
        Agent = "agent",
        Customer = "customer",
        Pstn = "pstn",
        Supervisor = "supervisor",
        Guest = "guest",
    }
);

impl Role {
    /// The role a media participant joined with; unknown or empty is a customer (the
    /// signaling protocol's default).
    pub fn from_media(role: &str) -> Role {
        role.parse().unwrap_or(Role::Customer)
    }
}

text_enum!(
    /// `call_recordings.status`.
    RecordingStatus, "recording status" {
        Recording = "recording",
        Ready = "ready",
        Failed = "failed",
    }
);

text_enum!(
    /// `consent_events.kind` for the events the recorder produces (the API and the PBX add the
    /// verbal and keypress kinds; see the store).
    ConsentKind, "consent kind" {
        IvrAnnouncement = "ivr_announcement",
        PeriodicBeep = "periodic_beep",
        /// A phone leg pressed 1.
        Dtmf1 = "dtmf_1",
        VerbalYes = "verbal_yes",
        VerbalNo = "verbal_no",
    }
);

impl ConsentKind {
    /// The recorder's name for a consent sound (`announcement`, `beep`) or the database's.
    pub fn from_recorder(kind: &str) -> Option<ConsentKind> {
        match kind {
            "announcement" | "ivr_announcement" => Some(ConsentKind::IvrAnnouncement),
            "beep" | "periodic_beep" => Some(ConsentKind::PeriodicBeep),
            _ => None,
        }
    }
}

/// The id of a recording's consent event: the same for the live event and for the list in the
/// finished recording's summary, so the event is stored once whichever arrives first.
pub fn consent_id(recording: RecordingId, kind: ConsentKind, offset_ms: u64) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("commhub/consent/{recording}/{}/{offset_ms}", kind.as_str()).as_bytes(),
    )
}

/// "a, b or c": how error messages list the accepted values.
pub fn or_list(texts: &[&str]) -> String {
    match texts {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Why a participant left, in the signaling protocol's words (also the database's
/// `leave_reason`).
pub fn leave_reason(r: media::LeaveReason) -> signaling::LeaveReason {
    use media::LeaveReason as M;
    use signaling::LeaveReason as S;
    match r {
        M::Left => S::Left,
        M::Disconnected => S::Disconnected,
        M::MediaTimeout => S::MediaTimeout,
        M::KeepaliveTimeout => S::KeepaliveTimeout,
        M::ServerShutdown => S::ServerShutdown,
        M::Kicked => S::Kicked,
        M::CallEnded => S::CallEnded,
    }
}

/// E.164: `+` then 2 to 15 digits, the first not 0.
pub fn valid_e164(n: &str) -> bool {
    let Some(d) = n.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip_and_refuse_others() {
        for s in CallStatus::ALL {
            assert_eq!(s.as_str().parse::<CallStatus>(), Ok(*s));
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(*r));
            assert_eq!(
                serde_json::to_value(r).expect("json"),
                serde_json::json!(r.as_str())
            );
        }
        assert!("system".parse::<Role>().is_err());
        assert!("Ended".parse::<CallStatus>().is_err());
        assert_eq!(Role::from_media(""), Role::Customer);
        assert_eq!(Role::from_media("pstn"), Role::Pstn);
    }

    #[test]
    fn ids_parse_once_and_say_what_was_wrong() {
        let id = CallId::new_random();
        assert_eq!(id.to_string().parse::<CallId>(), Ok(id));
        let e = "nope".parse::<RecordingId>().expect_err("not a uuid");
        assert_eq!(e.what, "recording");
        assert_eq!(
            RoomName::for_call(id).as_str(),
            format!("call-{}", id.0.simple())
        );
    }

    #[test]
    fn consent_ids_are_stable() {
        let r = RecordingId(Uuid::nil());
        assert_eq!(
            consent_id(r, ConsentKind::PeriodicBeep, 15_000),
            consent_id(r, ConsentKind::PeriodicBeep, 15_000)
        );
        assert_ne!(
            consent_id(r, ConsentKind::PeriodicBeep, 15_000),
            consent_id(r, ConsentKind::IvrAnnouncement, 15_000)
        );
    }
}
