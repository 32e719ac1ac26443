//! One WebSocket signaling session: text frames are parsed by `signaling`, checked by its
//! [`Session`] state machine, and carried out on a `media` [`Participant`]; the participant's
//! events (others joining and leaving, renegotiation, ICE candidates, levels) go back out as
//! server messages. See `docs/signaling.md`.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use media::{
    IceCandidateInit, LeaveReason as MediaLeave, Notice, Participant, ParticipantEvent,
    ParticipantKind, ParticipantMeta, SfuError, Target,
};
use signaling::{
    Action, ErrorCode, IceCandidate, LeaveReason, Level, PROTOCOL_VERSION, ParticipantInfo,
    PcTarget, ServerMessage, Session, SignalError, TrackInfo, parse_client_message,
};
use tokio::sync::mpsc;

use crate::http::AppState;

/// Frames larger than this close the socket outright; up to it, the protocol's 64 KiB limit
/// answers with a typed `too_large` error.
const MAX_FRAME_BYTES: usize = 1024 * 1024;

pub async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| run(socket, state))
}

fn info(m: &ParticipantMeta) -> ParticipantInfo {
    ParticipantInfo {
        id: m.id.to_string(),
        display_name: m.display_name.clone(),
        role: serde_json::from_value(serde_json::Value::String(m.role.clone())).unwrap_or_default(),
        publishing: m.publishing,
    }
}

fn target_in(t: PcTarget) -> Target {
    match t {
        PcTarget::Publish => Target::Publish,
        PcTarget::Subscribe => Target::Subscribe,
    }
}

fn target_out(t: Target) -> PcTarget {
    match t {
        Target::Publish => PcTarget::Publish,
        Target::Subscribe => PcTarget::Subscribe,
    }
}

fn candidate_out(c: IceCandidateInit) -> IceCandidate {
    // webrtc-rs leaves sdpMid empty; browsers reject an empty mid, and every m-line is
    // bundled, so name the first m-line instead.
    let sdp_mid = c.sdp_mid.filter(|m| !m.is_empty());
    let sdp_mline_index = match (&sdp_mid, c.sdp_mline_index) {
        (None, None) => Some(0),
        (_, i) => i,
    };
    IceCandidate {
        candidate: c.candidate,
        sdp_mid,
        sdp_mline_index,
        username_fragment: c.username_fragment,
    }
}

fn candidate_in(c: IceCandidate) -> IceCandidateInit {
    IceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: c.username_fragment,
        ..Default::default()
    }
}

/// Map a media error to a protocol error without leaking internals.
fn sfu_error(e: &SfuError, ty: &str) -> SignalError {
    let (code, msg) = match e {
        SfuError::BadSdp(m) => (ErrorCode::BadSdp, m.clone()),
        SfuError::Room(media::room::RoomError::Full(n)) => {
            (ErrorCode::Capacity, format!("the room is full ({n})"))
        }
        SfuError::Room(r) => (ErrorCode::OutOfOrder, r.to_string()),
        SfuError::ShuttingDown => (ErrorCode::Capacity, "the server is shutting down".into()),
        SfuError::NotFound(m) => (ErrorCode::InvalidField, m.clone()),
        SfuError::State(m) => (ErrorCode::OutOfOrder, (*m).to_string()),
        SfuError::Peer(media::PeerError::NoPorts) => (
            ErrorCode::Capacity,
            "no media ports available on the server".into(),
        ),
        SfuError::Peer(p) => {
            tracing::warn!(error = %p, "{ty} failed");
            (ErrorCode::Internal, format!("{ty} failed on the server"))
        }
    };
    SignalError::new(code, msg).reply_to(ty)
}

/// Check a join's token when auth is on: `Ok(None)` when auth is off.
pub fn authorize(
    state: &AppState,
    room: &str,
    token: Option<&str>,
) -> Result<Option<crate::auth::Claims>, SignalError> {
    if !state.cfg.auth.enabled {
        return Ok(None);
    }
    let res = match token {
        None => Err(crate::auth::TokenError::Missing),
        Some(t) => state.tokens.verify(t).and_then(|c| c.for_room(room)),
    };
    res.map(Some).map_err(|e| {
        tracing::debug!(code = e.code(), "join refused");
        SignalError::new(ErrorCode::Unauthorized, format!("{}: {e}", e.code()))
    })
}

struct Conn {
    state: AppState,
    out: mpsc::UnboundedSender<Message>,
    session: Session,
    participant: Option<Participant>,
}

impl Conn {
    fn send(&self, m: &ServerMessage) {
        let _ = self.out.send(Message::Text(m.to_json().into()));
    }

    fn error(&self, e: &SignalError) {
        tracing::debug!(code = e.code.as_str(), "signaling error: {}", e.message);
        self.send(&ServerMessage::error(e));
    }

    async fn leave(&mut self, reason: MediaLeave) {
        if let Some(p) = self.participant.take() {
            p.leave(reason).await;
        }
        self.session.left();
    }

    async fn offer(&mut self) {
        let Some(p) = self.participant.as_mut() else {
            return;
        };
        match p.subscribe_offer().await {
            Ok((sdp, tracks)) => {
                let revision = self.session.subscribe.offer_sent();
                self.send(&ServerMessage::SubscribeOffer {
                    sdp,
                    revision,
                    tracks: tracks
                        .into_iter()
                        .map(|t| TrackInfo {
                            participant_id: t.participant_id.to_string(),
                            stream_id: t.stream_id,
                            track_id: t.track_id,
                        })
                        .collect(),
                });
            }
            Err(e) => {
                self.session.subscribe.offer_failed();
                self.error(&sfu_error(&e, "subscribe_offer"));
            }
        }
    }

    async fn on_text(&mut self, text: &str) {
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err(e) => return self.error(&e),
        };
        let action = match self.session.on_message(msg) {
            Ok(a) => a,
            Err(e) => return self.error(&e),
        };
        match action {
            Action::Pong { id } => self.send(&ServerMessage::Pong { id }),
            Action::Join {
                room,
                display_name,
                role,
                token,
                record,
            } => {
                let claims = match authorize(&self.state, &room, token.as_deref()) {
                    Ok(c) => c,
                    Err(e) => {
                        self.session.join_failed();
                        return self.error(&e.reply_to("join"));
                    }
                };
                // The token decides the role; without auth the client may say.
                let role = match &claims {
                    Some(c) => c.role.clone(),
                    None => role.map(|r| r.as_str().to_string()).unwrap_or_default(),
                };
                let identity = claims.as_ref().map(|c| c.sub.clone());
                let token_call = claims.as_ref().and_then(|c| c.call());
                if self
                    .state
                    .calls
                    .admit(&room, token_call, record)
                    .await
                    .is_err()
                {
                    self.session.join_failed();
                    return self.error(
                        &SignalError::new(ErrorCode::CallEnded, "this call has ended")
                            .reply_to("join"),
                    );
                }
                let joined = self.state.sfu.join(
                    &room,
                    display_name.clone(),
                    role.clone(),
                    ParticipantKind::Signaling,
                );
                match joined {
                    Ok((p, others)) => {
                        self.state
                            .calls
                            .joined(
                                &room,
                                crate::calls::Joining::new(
                                    &p.id,
                                    ParticipantKind::Signaling,
                                    &role,
                                    &display_name,
                                    identity.clone(),
                                ),
                            )
                            .await;
                        let any_publishing = others.iter().any(|m| m.publishing);
                        self.session.joined_ok(room.clone(), p.id.to_string());
                        self.send(&ServerMessage::Joined {
                            room,
                            participant_id: p.id.to_string(),
                            participants: others.iter().map(info).collect(),
                            ice_servers: crate::auth::ice_servers(
                                &self.state.cfg,
                                identity.as_deref().unwrap_or(&display_name),
                            ),
                        });
                        self.participant = Some(p);
                        if any_publishing && self.session.subscribe.request() {
                            self.offer().await;
                        }
                    }
                    Err(e) => {
                        self.session.join_failed();
                        self.error(&sfu_error(&e, "join"));
                    }
                }
            }
            Action::Publish { sdp } => {
                let Some(p) = self.participant.as_mut() else {
                    return;
                };
                match p.publish(sdp, false).await {
                    Ok(answer) => {
                        self.session.publish_done(true);
                        self.send(&ServerMessage::PublishAnswer { sdp: answer });
                    }
                    Err(e) => {
                        self.session.publish_done(false);
                        self.error(&sfu_error(&e, "publish"));
                    }
                }
            }
            Action::ApplySubscribeAnswer { sdp } => {
                let Some(p) = self.participant.as_mut() else {
                    return;
                };
                let res = p.subscribe_answer(sdp).await;
                let again = self.session.subscribe.answered();
                if let Err(e) = res {
                    self.error(&sfu_error(&e, "subscribe_answer"));
                }
                if again && self.session.subscribe.request() {
                    self.offer().await;
                }
            }
            Action::AddIceCandidate { target, candidate } => {
                let Some(p) = self.participant.as_ref() else {
                    return;
                };
                if let Err(e) = p
                    .add_remote_candidate(target_in(target), candidate.map(candidate_in))
                    .await
                {
                    let mut err = sfu_error(&e, "ice_candidate");
                    if err.code == ErrorCode::BadSdp {
                        err.code = ErrorCode::InvalidField;
                    }
                    self.error(&err);
                }
            }
            Action::SetRecording { enabled } => {
                let Some(room) = self.session.joined().map(|(r, _)| r.to_string()) else {
                    return;
                };
                let running = self.state.calls.set_recording(&room, enabled).await;
                if enabled && running.is_none() {
                    self.error(
                        &SignalError::new(ErrorCode::Internal, "recording: it did not start")
                            .reply_to("set_recording"),
                    );
                }
            }
            Action::Leave => {
                self.leave(MediaLeave::Left).await;
                self.send(&ServerMessage::Left {
                    reason: LeaveReason::Left,
                });
            }
        }
    }

    /// Returns false when the session must end.
    async fn on_event(&mut self, ev: ParticipantEvent) -> bool {
        match ev {
            ParticipantEvent::Notice(Notice::Joined(m)) => {
                self.send(&ServerMessage::ParticipantJoined {
                    participant: info(&m),
                });
            }
            ParticipantEvent::Notice(Notice::Updated(m)) => {
                self.send(&ServerMessage::ParticipantUpdated {
                    participant: info(&m),
                });
            }
            ParticipantEvent::Notice(Notice::Left { id, reason }) => {
                self.send(&ServerMessage::ParticipantLeft {
                    participant_id: id.to_string(),
                    reason: crate::domain::leave_reason(reason),
                });
            }
            ParticipantEvent::Notice(Notice::TracksChanged) => {
                if self.session.subscribe.request() {
                    self.offer().await;
                }
            }
            ParticipantEvent::LocalCandidate { target, candidate } => {
                self.send(&ServerMessage::IceCandidate {
                    target: target_out(target),
                    candidate: candidate.map(candidate_out),
                });
            }
            ParticipantEvent::AudioLevels {
                levels,
                active_speaker,
            } => {
                self.send(&ServerMessage::AudioLevels {
                    levels: levels
                        .into_iter()
                        .map(|(id, level)| Level {
                            participant_id: id.to_string(),
                            level,
                        })
                        .collect(),
                    active_speaker: active_speaker.map(|s| s.to_string()),
                });
            }
            ParticipantEvent::ActiveSpeaker(s) => {
                self.send(&ServerMessage::ActiveSpeaker {
                    participant_id: s.map(|s| s.to_string()),
                });
            }
            ParticipantEvent::MediaTimeout(target) => {
                tracing::info!(?target, "media timeout; removing participant");
                self.leave(MediaLeave::MediaTimeout).await;
                self.send(&ServerMessage::Left {
                    reason: LeaveReason::MediaTimeout,
                });
            }
            ParticipantEvent::Message(text) => {
                let _ = self.out.send(Message::Text(text.to_string().into()));
            }
            ParticipantEvent::Removed(reason) => {
                self.leave(reason).await;
                self.send(&ServerMessage::Bye {
                    reason: crate::domain::leave_reason(reason),
                });
                return false;
            }
        }
        true
    }
}

async fn next_event(p: &mut Option<Participant>) -> Option<ParticipantEvent> {
    match p {
        Some(p) => p.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn run(socket: WebSocket, state: AppState) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    // One writer so frames never interleave; it ends when every sender is gone.
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let keepalive = Duration::from_secs(state.cfg.signaling.keepalive_secs);
    let limit = keepalive * state.cfg.signaling.missed_keepalives;
    let mut shutdown = state.shutdown.clone();
    let mut conn = Conn {
        state,
        out: out_tx,
        session: Session::new(),
        participant: None,
    };
    conn.send(&ServerMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        server: format!("commhub/{}", env!("CARGO_PKG_VERSION")),
        keepalive_secs: keepalive.as_secs(),
    });
    let mut last_seen = Instant::now();
    let mut check = tokio::time::interval(keepalive.min(Duration::from_secs(5)));
    let mut end_reason = MediaLeave::Disconnected;

    if *shutdown.borrow() {
        conn.send(&ServerMessage::Bye {
            reason: LeaveReason::ServerShutdown,
        });
    } else {
        loop {
            tokio::select! {
                frame = stream.next() => {
                    last_seen = Instant::now();
                    match frame {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                        Some(Ok(Message::Text(t))) => conn.on_text(t.as_str()).await,
                        Some(Ok(Message::Binary(_))) => conn.error(&SignalError::new(
                            ErrorCode::UnsupportedFrame,
                            "binary frames are not part of the protocol; send JSON text",
                        )),
                        Some(Ok(_)) => {}
                    }
                }
                ev = next_event(&mut conn.participant) => {
                    if let Some(ev) = ev
                        && !conn.on_event(ev).await
                    {
                        end_reason = MediaLeave::ServerShutdown;
                        break;
                    }
                }
                _ = check.tick() => {
                    if last_seen.elapsed() > limit {
                        conn.send(&ServerMessage::Bye { reason: LeaveReason::KeepaliveTimeout });
                        end_reason = MediaLeave::KeepaliveTimeout;
                        break;
                    }
                }
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        conn.send(&ServerMessage::Bye { reason: LeaveReason::ServerShutdown });
                        end_reason = MediaLeave::ServerShutdown;
                        break;
                    }
                }
            }
        }
    }
    conn.leave(end_reason).await;
    let _ = conn.out.send(Message::Close(None));
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}
