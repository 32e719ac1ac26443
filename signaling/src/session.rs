//! The per-connection state machine.
//!
//! A [`Session`] takes each parsed [`ClientMessage`] and answers either the [`Action`] the server
//! must carry out or a `out_of_order` error. The server reports back what it did (`joined`,
//! `publish_answered`, `offer_sent`) so that the session always knows which messages are allowed.

use crate::error::{ErrorCode, SignalError};
use crate::protocol::{ClientMessage, IceCandidate, PcTarget, Role};

/// Where a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Connected, not in a room.
    Idle,
    /// `join` accepted, waiting for the server to admit the participant.
    Joining,
    /// In a room.
    Joined {
        room: String,
        participant_id: String,
    },
}

/// What the server must do for a client message that the state machine accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Join {
        room: String,
        display_name: String,
        role: Option<Role>,
        token: Option<String>,
        record: Option<bool>,
    },
    SetRecording {
        enabled: bool,
    },
    /// Apply the publish offer and reply with `publish_answer`.
    Publish {
        sdp: String,
    },
    /// Apply the subscribe answer; afterwards call [`Session::subscribe_answered`].
    ApplySubscribeAnswer {
        sdp: String,
    },
    AddIceCandidate {
        target: PcTarget,
        candidate: Option<IceCandidate>,
    },
    Leave,
    Pong {
        id: Option<u64>,
    },
}

/// Sequencing of server-initiated offers on the subscribe connection: at most one offer is
/// outstanding; changes that arrive meanwhile are folded into one follow-up offer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeNegotiation {
    revision: u64,
    outstanding: Option<u64>,
    dirty: bool,
}

impl SubscribeNegotiation {
    /// The set of tracks changed. Returns true when the caller should create and send an offer
    /// now; false when one is outstanding (a follow-up is then owed after its answer).
    pub fn request(&mut self) -> bool {
        if self.outstanding.is_some() {
            self.dirty = true;
            false
        } else {
            true
        }
    }

    /// An offer was sent; returns its revision.
    pub fn offer_sent(&mut self) -> u64 {
        self.revision += 1;
        self.outstanding = Some(self.revision);
        self.dirty = false;
        self.revision
    }

    /// The offer failed to go out (e.g. create_offer errored): nothing is outstanding.
    pub fn offer_failed(&mut self) {
        self.outstanding = None;
    }

    /// Check an answer's revision against the outstanding offer.
    pub fn check_answer(&self, revision: u64) -> Result<(), SignalError> {
        match self.outstanding {
            None => Err(SignalError::new(
                ErrorCode::OutOfOrder,
                "no subscribe offer is outstanding",
            )),
            Some(r) if r != revision => Err(SignalError::new(
                ErrorCode::OutOfOrder,
                format!("answer is for revision {revision}; the outstanding offer is {r}"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The answer was applied. Returns true when another offer is owed.
    pub fn answered(&mut self) -> bool {
        self.outstanding = None;
        std::mem::take(&mut self.dirty)
    }

    pub fn outstanding(&self) -> Option<u64> {
        self.outstanding
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// One WebSocket connection's protocol state.
#[derive(Debug, Clone)]
pub struct Session {
    state: SessionState,
    publish_offered: bool,
    publish_pending: bool,
    pub subscribe: SubscribeNegotiation,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Session {
            state: SessionState::Idle,
            publish_offered: false,
            publish_pending: false,
            subscribe: SubscribeNegotiation::default(),
        }
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The room and participant id, when joined.
    pub fn joined(&self) -> Option<(&str, &str)> {
        match &self.state {
            SessionState::Joined {
                room,
                participant_id,
            } => Some((room, participant_id)),
            _ => None,
        }
    }

    /// Decide what a client message means now.
    pub fn on_message(&mut self, msg: ClientMessage) -> Result<Action, SignalError> {
        let ty = msg.type_name();
        self.decide(msg).map_err(|e| e.reply_to(ty))
    }

    fn decide(&mut self, msg: ClientMessage) -> Result<Action, SignalError> {
        let joined = matches!(self.state, SessionState::Joined { .. });
        match msg {
            ClientMessage::Ping { id } => Ok(Action::Pong { id }),
            ClientMessage::Join {
                room,
                display_name,
                role,
                token,
                record,
                ..
            } => {
                if self.state != SessionState::Idle {
                    return Err(SignalError::new(
                        ErrorCode::OutOfOrder,
                        "already joined or joining a room; send `leave` first",
                    ));
                }
                self.state = SessionState::Joining;
                Ok(Action::Join {
                    room,
                    display_name: display_name.trim().to_string(),
                    role,
                    token,
                    record,
                })
            }
            _ if !joined => Err(SignalError::new(ErrorCode::OutOfOrder, "join a room first")),
            ClientMessage::Publish { sdp } => {
                if self.publish_pending {
                    return Err(SignalError::new(
                        ErrorCode::OutOfOrder,
                        "the previous publish offer has not been answered yet",
                    ));
                }
                self.publish_pending = true;
                Ok(Action::Publish { sdp })
            }
            ClientMessage::SubscribeAnswer { sdp, revision } => {
                self.subscribe.check_answer(revision)?;
                Ok(Action::ApplySubscribeAnswer { sdp })
            }
            ClientMessage::IceCandidate { target, candidate } => {
                let ready = match target {
                    PcTarget::Publish => self.publish_offered,
                    PcTarget::Subscribe => self.subscribe.revision() > 0,
                };
                if !ready {
                    return Err(SignalError::new(
                        ErrorCode::OutOfOrder,
                        format!(
                            "no {} connection yet",
                            match target {
                                PcTarget::Publish => "publish",
                                PcTarget::Subscribe => "subscribe",
                            }
                        ),
                    ));
                }
                Ok(Action::AddIceCandidate { target, candidate })
            }
            ClientMessage::Leave => Ok(Action::Leave),
            ClientMessage::SetRecording { enabled } => Ok(Action::SetRecording { enabled }),
        }
    }

    /// The server admitted the participant.
    pub fn joined_ok(&mut self, room: String, participant_id: String) {
        self.state = SessionState::Joined {
            room,
            participant_id,
        };
    }

    /// The server refused the join (auth, capacity...).
    pub fn join_failed(&mut self) {
        self.state = SessionState::Idle;
    }

    /// The publish offer was processed (answered or refused).
    pub fn publish_done(&mut self, ok: bool) {
        self.publish_pending = false;
        if ok {
            self.publish_offered = true;
        }
    }

    /// The participant left (by request, or removed by the server).
    pub fn left(&mut self) {
        *self = Session::new();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn join(s: &mut Session) -> Result<Action, SignalError> {
        s.on_message(ClientMessage::Join {
            room: "r".into(),
            display_name: " Ann ".into(),
            role: Some(Role::Agent),
            token: None,
            protocol: None,
            record: None,
        })
    }

    fn publish() -> ClientMessage {
        ClientMessage::Publish {
            sdp: "v=0\r\n".into(),
        }
    }

    #[test]
    fn everything_but_join_and_ping_needs_a_room() {
        let mut s = Session::new();
        for m in [
            publish(),
            ClientMessage::SubscribeAnswer {
                sdp: "v=0".into(),
                revision: 1,
            },
            ClientMessage::IceCandidate {
                target: PcTarget::Publish,
                candidate: None,
            },
            ClientMessage::Leave,
        ] {
            let ty = m.type_name();
            let e = s.on_message(m).unwrap_err();
            assert_eq!(e.code, ErrorCode::OutOfOrder);
            assert_eq!(e.in_reply_to.as_deref(), Some(ty));
        }
        assert_eq!(
            s.on_message(ClientMessage::Ping { id: Some(1) }),
            Ok(Action::Pong { id: Some(1) })
        );
    }

    #[test]
    fn join_trims_name_and_refuses_second_join() {
        let mut s = Session::new();
        match join(&mut s).expect("join") {
            Action::Join { display_name, .. } => assert_eq!(display_name, "Ann"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(s.state(), &SessionState::Joining);
        assert_eq!(join(&mut s).unwrap_err().code, ErrorCode::OutOfOrder);
        s.joined_ok("r".into(), "p1".into());
        assert_eq!(s.joined(), Some(("r", "p1")));
        assert_eq!(join(&mut s).unwrap_err().code, ErrorCode::OutOfOrder);
    }

    #[test]
    fn failed_join_allows_retry() {
        let mut s = Session::new();
        join(&mut s).expect("join");
        s.join_failed();
        join(&mut s).expect("join again");
    }

    #[test]
    fn publish_is_one_at_a_time_and_enables_publish_candidates() {
        let mut s = Session::new();
        join(&mut s).expect("join");
        s.joined_ok("r".into(), "p1".into());
        let cand = ClientMessage::IceCandidate {
            target: PcTarget::Publish,
            candidate: None,
        };
        assert_eq!(
            s.on_message(cand.clone()).unwrap_err().code,
            ErrorCode::OutOfOrder
        );
        assert!(matches!(
            s.on_message(publish()),
            Ok(Action::Publish { .. })
        ));
        assert_eq!(
            s.on_message(publish()).unwrap_err().code,
            ErrorCode::OutOfOrder
        );
        s.publish_done(true);
        assert!(s.on_message(cand).is_ok());
        assert!(matches!(
            s.on_message(publish()),
            Ok(Action::Publish { .. })
        ));
    }

    #[test]
    fn subscribe_renegotiation_never_has_two_offers_outstanding() {
        let mut n = SubscribeNegotiation::default();
        assert!(n.request());
        let r1 = n.offer_sent();
        // Two changes while r1 is outstanding fold into one follow-up.
        assert!(!n.request());
        assert!(!n.request());
        assert!(n.check_answer(r1 + 1).is_err());
        assert!(n.check_answer(r1).is_ok());
        assert!(n.answered(), "a follow-up offer is owed");
        let r2 = n.offer_sent();
        assert_eq!(r2, r1 + 1);
        assert!(!n.answered(), "nothing changed during r2");
        assert!(n.check_answer(r2).is_err(), "answer twice");
        assert!(n.request());
    }

    #[test]
    fn stale_or_unsolicited_answers_are_out_of_order() {
        let mut s = Session::new();
        join(&mut s).expect("join");
        s.joined_ok("r".into(), "p1".into());
        let ans = |revision| ClientMessage::SubscribeAnswer {
            sdp: "v=0".into(),
            revision,
        };
        assert_eq!(
            s.on_message(ans(1)).unwrap_err().code,
            ErrorCode::OutOfOrder
        );
        let r = s.subscribe.offer_sent();
        assert_eq!(
            s.on_message(ans(r + 5)).unwrap_err().code,
            ErrorCode::OutOfOrder
        );
        assert!(matches!(
            s.on_message(ans(r)),
            Ok(Action::ApplySubscribeAnswer { .. })
        ));
    }

    #[test]
    fn leave_resets_everything() {
        let mut s = Session::new();
        join(&mut s).expect("join");
        s.joined_ok("r".into(), "p1".into());
        s.subscribe.offer_sent();
        assert_eq!(s.on_message(ClientMessage::Leave), Ok(Action::Leave));
        s.left();
        assert_eq!(s.state(), &SessionState::Idle);
        assert_eq!(s.subscribe.outstanding(), None);
        join(&mut s).expect("rejoin");
    }
}
