//! The room model: who is in a room, who publishes, and who must hear about what. Pure state
//! with no IO, so the rules are tested without sockets; [`crate::sfu`] wraps it with the
//! peer connections and channels.
//!
//! Definitions (after mediasoup's object model):
//! - a *room* is a set of participants whose audio is forwarded to each other;
//! - a *participant* joined the room over signaling (browser), WHIP, or a PSTN leg;
//! - a *producer* is a participant's published audio (at most one per participant here);
//! - a *consumer* is one producer's audio delivered to one subscriber on its own output stream.
//!
//! Every participant with a subscriber connection consumes every other participant's producer.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Participant ids are UUID strings; `Arc<str>` so the hot path clones them cheaply.
pub type ParticipantId = Arc<str>;

/// How a participant reached the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParticipantKind {
    /// WebSocket signaling (browsers, SDK clients).
    Signaling,
    /// WHIP publisher (publishes only).
    Whip,
    /// The server's own audio source (consent beeps, announcements). It publishes to every
    /// subscriber but does not keep a room open and is never recorded.
    System,
    /// A phone leg bridged over SIP: publishes its decoded uplink, hears a mix-minus.
    Pstn,
}

impl ParticipantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantKind::Signaling => "signaling",
            ParticipantKind::Whip => "whip",
            ParticipantKind::System => "system",
            ParticipantKind::Pstn => "pstn",
        }
    }
}

/// Why a participant left. `src` maps it to the signaling and database vocabularies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaveReason {
    Left,
    Disconnected,
    MediaTimeout,
    KeepaliveTimeout,
    ServerShutdown,
    Kicked,
    /// The call was ended through the API.
    CallEnded,
}

/// What the room knows of a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantMeta {
    pub id: ParticipantId,
    pub display_name: String,
    pub role: String,
    pub kind: ParticipantKind,
    /// Order of arrival in the room (0 = first).
    pub join_seq: u64,
    pub publishing: bool,
}

/// Something a participant must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Joined(ParticipantMeta),
    Updated(ParticipantMeta),
    Left {
        id: ParticipantId,
        reason: LeaveReason,
    },
    /// The set of producers this participant consumes changed: renegotiate its subscriber.
    TracksChanged,
}

/// Notices addressed to participants.
pub type Notices = Vec<(ParticipantId, Notice)>;

#[derive(Debug, Clone)]
struct Member {
    meta: ParticipantMeta,
    subscribes: bool,
}

/// Errors of room operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("participant is already in the room")]
    AlreadyJoined,
    #[error("no such participant in the room")]
    NotFound,
    #[error("the room is full ({0} participants)")]
    Full(usize),
}

/// One room's membership.
#[derive(Debug, Clone)]
pub struct RoomModel {
    name: String,
    members: BTreeMap<ParticipantId, Member>,
    next_seq: u64,
    max_participants: usize,
}

impl RoomModel {
    pub fn new(name: impl Into<String>, max_participants: usize) -> Self {
        RoomModel {
            name: name.into(),
            members: BTreeMap::new(),
            next_seq: 0,
            max_participants,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when nobody but the server's own system sources is left.
    pub fn is_empty(&self) -> bool {
        self.members
            .values()
            .all(|m| m.meta.kind == ParticipantKind::System)
    }

    /// Everyone, in order of arrival.
    pub fn participants(&self) -> Vec<ParticipantMeta> {
        let mut v: Vec<_> = self.members.values().map(|m| m.meta.clone()).collect();
        v.sort_by_key(|m| m.join_seq);
        v
    }

    pub fn get(&self, id: &str) -> Option<&ParticipantMeta> {
        self.members.get(id).map(|m| &m.meta)
    }

    /// Admit a participant. `subscribes` says whether it receives the others' audio (WHIP
    /// publishers do not). Everyone else is told.
    pub fn join(
        &mut self,
        id: ParticipantId,
        display_name: String,
        role: String,
        kind: ParticipantKind,
        subscribes: bool,
    ) -> Result<(ParticipantMeta, Notices), RoomError> {
        if self.members.contains_key(&id) {
            return Err(RoomError::AlreadyJoined);
        }
        if self.members.len() >= self.max_participants {
            return Err(RoomError::Full(self.max_participants));
        }
        let meta = ParticipantMeta {
            id: id.clone(),
            display_name,
            role,
            kind,
            join_seq: self.next_seq,
            publishing: false,
        };
        self.next_seq += 1;
        let notices = self
            .others(&id)
            .map(|o| (o, Notice::Joined(meta.clone())))
            .collect();
        self.members.insert(
            id,
            Member {
                meta: meta.clone(),
                subscribes,
            },
        );
        Ok((meta, notices))
    }

    /// A participant started or stopped publishing: everyone else learns of it, and every other
    /// subscriber renegotiates.
    pub fn set_publishing(&mut self, id: &str, publishing: bool) -> Result<Notices, RoomError> {
        let m = self.members.get_mut(id).ok_or(RoomError::NotFound)?;
        if m.meta.publishing == publishing {
            return Ok(Vec::new());
        }
        m.meta.publishing = publishing;
        let meta = m.meta.clone();
        let mut notices: Notices = Vec::new();
        for (oid, o) in self.members.iter().filter(|(k, _)| k.as_ref() != id) {
            notices.push((oid.clone(), Notice::Updated(meta.clone())));
            if o.subscribes {
                notices.push((oid.clone(), Notice::TracksChanged));
            }
        }
        Ok(notices)
    }

    /// Remove a participant; the others are told, and subscribers renegotiate when it published.
    pub fn leave(
        &mut self,
        id: &str,
        reason: LeaveReason,
    ) -> Result<(ParticipantMeta, Notices), RoomError> {
        let m = self.members.remove(id).ok_or(RoomError::NotFound)?;
        let mut notices: Notices = Vec::new();
        for (oid, o) in &self.members {
            notices.push((
                oid.clone(),
                Notice::Left {
                    id: m.meta.id.clone(),
                    reason,
                },
            ));
            if m.meta.publishing && o.subscribes {
                notices.push((oid.clone(), Notice::TracksChanged));
            }
        }
        Ok((m.meta, notices))
    }

    /// The producers `subscriber` consumes: every other publishing participant, in arrival order.
    pub fn producers_for(&self, subscriber: &str) -> Vec<ParticipantMeta> {
        let mut v: Vec<_> = self
            .members
            .values()
            .filter(|m| m.meta.publishing && m.meta.id.as_ref() != subscriber)
            .map(|m| m.meta.clone())
            .collect();
        v.sort_by_key(|m| m.join_seq);
        v
    }

    fn others<'a>(&'a self, id: &'a str) -> impl Iterator<Item = ParticipantId> + 'a {
        self.members
            .keys()
            .filter(move |k| k.as_ref() != id)
            .cloned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pid(s: &str) -> ParticipantId {
        Arc::from(s)
    }

    fn join(room: &mut RoomModel, id: &str, subscribes: bool) -> Notices {
        room.join(
            pid(id),
            id.to_uppercase(),
            "customer".into(),
            ParticipantKind::Signaling,
            subscribes,
        )
        .expect("join")
        .1
    }

    fn to(notices: &Notices, who: &str) -> Vec<Notice> {
        notices
            .iter()
            .filter(|(p, _)| p.as_ref() == who)
            .map(|(_, n)| n.clone())
            .collect()
    }

    #[test]
    fn join_tells_the_others_only() {
        let mut r = RoomModel::new("r", 10);
        assert!(join(&mut r, "a", true).is_empty());
        let n = join(&mut r, "b", true);
        assert_eq!(n.len(), 1);
        assert!(matches!(&to(&n, "a")[..], [Notice::Joined(m)] if m.id.as_ref() == "b"));
        assert_eq!(
            r.participants()
                .iter()
                .map(|m| m.join_seq)
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn double_join_and_capacity_are_refused() {
        let mut r = RoomModel::new("r", 2);
        join(&mut r, "a", true);
        assert_eq!(
            r.join(
                pid("a"),
                "A".into(),
                "x".into(),
                ParticipantKind::Whip,
                false
            )
            .unwrap_err(),
            RoomError::AlreadyJoined
        );
        join(&mut r, "b", true);
        assert_eq!(
            r.join(
                pid("c"),
                "C".into(),
                "x".into(),
                ParticipantKind::Whip,
                false
            )
            .unwrap_err(),
            RoomError::Full(2)
        );
    }

    #[test]
    fn publishing_renegotiates_every_other_subscriber() {
        let mut r = RoomModel::new("r", 10);
        join(&mut r, "a", true);
        join(&mut r, "b", true);
        join(&mut r, "w", false); // a WHIP publisher does not subscribe
        let n = r.set_publishing("a", true).expect("publish");
        assert!(to(&n, "a").is_empty(), "the publisher itself is not told");
        assert_eq!(to(&n, "b").len(), 2);
        assert!(to(&n, "b").contains(&Notice::TracksChanged));
        assert_eq!(to(&n, "w").len(), 1, "told, but no renegotiation");
        assert!(
            r.set_publishing("a", true).expect("again").is_empty(),
            "idempotent"
        );
        assert_eq!(r.producers_for("b").len(), 1);
        assert!(r.producers_for("a").is_empty(), "never consumes itself");
    }

    #[test]
    fn leaving_publisher_renegotiates_and_last_leave_empties_room() {
        let mut r = RoomModel::new("r", 10);
        join(&mut r, "a", true);
        join(&mut r, "b", true);
        r.set_publishing("a", true).expect("publish");
        r.set_publishing("b", true).expect("publish");
        let (meta, n) = r.leave("a", LeaveReason::MediaTimeout).expect("leave");
        assert_eq!(meta.id.as_ref(), "a");
        let nb = to(&n, "b");
        assert!(nb.contains(&Notice::Left {
            id: pid("a"),
            reason: LeaveReason::MediaTimeout
        }));
        assert!(nb.contains(&Notice::TracksChanged));
        assert!(r.producers_for("b").is_empty());
        assert_eq!(
            r.leave("a", LeaveReason::Left).unwrap_err(),
            RoomError::NotFound
        );
        r.leave("b", LeaveReason::Left).expect("leave");
        assert!(r.is_empty());
    }

    #[test]
    fn a_system_source_is_consumed_by_all_but_keeps_no_room_open() {
        let mut r = RoomModel::new("r", 10);
        join(&mut r, "a", true);
        r.join(
            pid("sys"),
            "System".into(),
            "system".into(),
            ParticipantKind::System,
            false,
        )
        .expect("system joins");
        let n = r.set_publishing("sys", true).expect("publishing");
        assert!(to(&n, "a").contains(&Notice::TracksChanged));
        assert_eq!(r.producers_for("a").len(), 1);
        assert!(!r.is_empty());
        r.leave("a", LeaveReason::Left).expect("leave");
        assert!(r.is_empty(), "only the system source is left");
    }

    #[test]
    fn late_joiner_consumes_everyone_already_publishing() {
        let mut r = RoomModel::new("r", 10);
        for p in ["a", "b", "c"] {
            join(&mut r, p, true);
            r.set_publishing(p, true).expect("publish");
        }
        join(&mut r, "d", true);
        let ids: Vec<_> = r
            .producers_for("d")
            .into_iter()
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
    }
}
