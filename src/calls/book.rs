//! The call book: every live call's state, and the rules that turn what happens (admissions,
//! joins, room events, recording events, call-end, the clock) into effects (store writes,
//! recordings to start or stop, rooms to end).
//!
//! No IO and no clock reads: the coordinator (`super::Coordinator`) feeds it events with `now`
//! and carries out the effects, and the unit tests below drive it directly. Events may come
//! in an order the happy path does not expect (a leave before its join is reported, a
//! duplicate, a recording result after the call ended): each case is handled here.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use media::RoomEvent;

use crate::domain::{
    CallId, CallStatus, ConsentKind, EndReason, ParticipantId, ParticipantKind, RecordingId,
    RecordingStatus, Role, RoomName, consent_id, leave_reason,
};
use crate::recording::RecordingEvent;
use crate::store::{Call, ConsentRow, Participant, RecordingRow, StoreOp};

/// What the coordinator must do.
#[derive(Debug)]
pub enum Effect {
    /// Queue a store write.
    Store(StoreOp),
    /// Queue a store write and tell call-end waiter `waiter` when it is durable.
    EndWritten {
        waiter: u64,
        op: StoreOp,
    },
    StartRecording {
        room: RoomName,
        call: CallId,
    },
    StopRecording {
        room: RoomName,
        reason: &'static str,
    },
    /// Remove everyone from the room (call-end).
    EndRoom(RoomName),
    /// A participant's subscribe connection is up: play it the recording announcement.
    Listening {
        room: RoomName,
        participant: String,
    },
    /// Input that cannot be used (a bad id, an event for an unknown recording): logged and
    /// counted, never silently dropped.
    Invalid {
        what: &'static str,
        detail: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("the call has ended")]
    Ended,
}

#[derive(Debug, Clone)]
pub struct BookConfig {
    /// Whether rooms are recorded when nobody chose (config `recording.enabled`).
    pub record_by_default: bool,
    /// A call no one joined is ended as `abandoned` after this.
    pub abandon_after: Duration,
    /// Ended (or never joined) calls are forgotten after this: no token for them is valid.
    pub forget_after: Duration,
    /// call-end waits this long for the room to empty and the recording to finish.
    pub end_timeout: Duration,
}

#[derive(Debug)]
struct Live {
    call: CallId,
    adhoc: bool,
    /// When the entry was made, or the call ended.
    since: Instant,
    present: HashSet<ParticipantId>,
    activated: bool,
    answered: bool,
    ended: bool,
    /// The SFU's room is open.
    open: bool,
    /// Recording chosen for this room (call-create, join, switch); `None`: the default.
    record: Option<bool>,
    /// The running (or finishing) recording of the room.
    recording: Option<RecordingId>,
    stopping: bool,
    /// call-end requests waiting for the room to empty and the recording to finish.
    waiters: Vec<u64>,
    end_reason: Option<String>,
    end_deadline: Option<Instant>,
    /// The call's phone numbers (from call-create or an inbound INVITE), normalised.
    numbers: Vec<String>,
    /// Participants whose `dtmf_1` consent is logged (once each).
    dtmf_consented: HashSet<ParticipantId>,
}

impl Live {
    fn new(call: CallId, adhoc: bool, now: Instant) -> Live {
        Live {
            call,
            adhoc,
            since: now,
            present: HashSet::new(),
            activated: false,
            answered: false,
            ended: false,
            open: false,
            record: None,
            recording: None,
            stopping: false,
            waiters: Vec::new(),
            end_reason: None,
            end_deadline: None,
            numbers: Vec::new(),
            dtmf_consented: HashSet::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct RecInfo {
    call: CallId,
    room: RoomName,
    started: SystemTime,
}

/// The state of every call this instance knows.
pub struct Book {
    cfg: BookConfig,
    rooms: HashMap<RoomName, Live>,
    participants: HashMap<ParticipantId, RoomName>,
    /// Leaves reported before their join (the SFU's report can overtake the admission's).
    left_early: HashMap<ParticipantId, (Instant, DateTime<Utc>, media::LeaveReason)>,
    recordings: HashMap<RecordingId, RecInfo>,
    /// Recording choices for rooms that have no call yet.
    prefs: HashMap<RoomName, (bool, Instant)>,
    next_waiter: u64,
}

fn utc(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

fn call_ended(call: CallId, at: DateTime<Utc>, reason: &str) -> StoreOp {
    StoreOp::CallEnded {
        call_id: call.0,
        at,
        reason: reason.to_string(),
    }
}

/// A participant's row as it joins.
#[derive(Debug, Clone)]
pub struct Joining {
    pub participant: ParticipantId,
    pub kind: ParticipantKind,
    pub role: Role,
    pub display_name: String,
    pub identity: Option<String>,
}

impl Joining {
    /// From what the SFU knows: its participant id, kind and role text.
    pub fn new(
        participant: &str,
        kind: media::ParticipantKind,
        role: &str,
        display_name: &str,
        identity: Option<String>,
    ) -> Joining {
        let role = Role::from_media(role);
        Joining {
            // The SFU's ids are UUIDs; anything else is caught when the join is recorded.
            participant: participant
                .parse()
                .unwrap_or(ParticipantId(uuid::Uuid::nil())),
            kind: match kind {
                media::ParticipantKind::Whip => ParticipantKind::Whip,
                _ if role == Role::Pstn => ParticipantKind::Pstn,
                _ => ParticipantKind::Browser,
            },
            role,
            display_name: display_name.to_string(),
            identity,
        }
    }
}

impl Book {
    pub fn new(cfg: BookConfig) -> Book {
        Book {
            cfg,
            rooms: HashMap::new(),
            participants: HashMap::new(),
            left_early: HashMap::new(),
            recordings: HashMap::new(),
            prefs: HashMap::new(),
            next_waiter: 1,
        }
    }

    // ------------------------------------------------------------------ queries

    /// The room of a call this instance knows, and whether it has ended.
    pub fn live_call(&self, call: CallId) -> Option<(RoomName, bool)> {
        self.rooms
            .iter()
            .find(|(_, l)| l.call == call)
            .map(|(r, l)| (r.clone(), l.ended))
    }

    /// The open call (not ended) one of whose numbers is `number` (normalised `+digits`);
    /// the newest when several are.
    pub fn call_of_number(&self, number: &str) -> Option<(CallId, RoomName)> {
        self.rooms
            .iter()
            .filter(|(_, l)| !l.ended && l.numbers.iter().any(|n| n == number))
            .max_by_key(|(_, l)| l.since)
            .map(|(r, l)| (l.call, r.clone()))
    }

    /// A participant pressed a key. A `1` is its recording consent: logged once per
    /// participant and call, against the running recording (offset into it) if there is one.
    pub fn dtmf(
        &mut self,
        room: &RoomName,
        participant: ParticipantId,
        digit: char,
        now: SystemTime,
    ) -> Vec<Effect> {
        if digit != '1' {
            return vec![];
        }
        let Some(l) = self.rooms.get_mut(room) else {
            return vec![Effect::Invalid {
                what: "dtmf",
                detail: format!("digit for room {room}, which has no call"),
            }];
        };
        if !l.dtmf_consented.insert(participant) {
            return vec![];
        }
        let rec = l
            .recording
            .and_then(|r| self.recordings.get(&r).map(|i| (r, i.started)));
        let offset_ms = rec
            .map(|(_, started)| now.duration_since(started).unwrap_or_default().as_millis() as i64)
            .unwrap_or(0);
        vec![Effect::Store(StoreOp::Consent(ConsentRow {
            id: uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("commhub/consent/{}/{participant}/dtmf_1", l.call).as_bytes(),
            ),
            call_id: l.call.0,
            participant_id: Some(participant.0),
            recording_id: rec.map(|(r, _)| r.0),
            kind: ConsentKind::Dtmf1.as_str().into(),
            offset_ms,
            occurred_at: utc(now),
            // The digit came from the phone network (the PBX or trunk).
            source: "pbx".into(),
            note: None,
        }))]
    }

    pub fn call_of_room(&self, room: &RoomName) -> Option<CallId> {
        self.rooms.get(room).map(|l| l.call)
    }

    pub fn recording_of(&self, room: &RoomName) -> Option<RecordingId> {
        self.rooms
            .get(room)
            .filter(|l| !l.stopping)
            .and_then(|l| l.recording)
    }

    /// Rooms with a recording running (shutdown stops them).
    pub fn recording_rooms(&self) -> Vec<RoomName> {
        self.rooms
            .iter()
            .filter(|(_, l)| l.recording.is_some() && !l.stopping)
            .map(|(r, _)| r.clone())
            .collect()
    }

    // ------------------------------------------------------------------ calls

    /// call-create made `call` (its room is not open yet).
    pub fn created(&mut self, call: &Call, now: Instant) {
        let room = RoomName(call.room.clone());
        let mut l = Live::new(CallId(call.id), false, now);
        l.record = Some(call.record);
        l.numbers = [&call.from_number, &call.to_number]
            .into_iter()
            .flatten()
            .filter_map(|n| signaling::sip::route::normalise_number(n))
            .collect();
        self.prefs.remove(&room);
        self.rooms.insert(room, l);
    }

    /// May someone join `room`? Returns its call, made ad hoc when the room has none.
    /// `token_call` is the call a join token names (a call created before a restart is not
    /// in memory); `record` a joiner's choice for a room that is not open yet.
    pub fn admit(
        &mut self,
        room: &RoomName,
        token_call: Option<CallId>,
        record: Option<bool>,
        now: Instant,
    ) -> (Result<CallId, CallError>, Vec<Effect>) {
        if let Some(l) = self.rooms.get_mut(room) {
            // A finished ad-hoc room's name may be used again: a new call.
            let reusable = l.ended && l.adhoc && !l.open && token_call.is_none();
            if !reusable {
                if l.ended {
                    return (Err(CallError::Ended), vec![]);
                }
                if !l.open && record.is_some() {
                    l.record = record;
                }
                return (Ok(l.call), vec![]);
            }
        }
        let record = record.or(self.prefs.remove(room).map(|(r, _)| r));
        if let Some(call) = token_call {
            let mut l = Live::new(call, false, now);
            l.record = record;
            self.rooms.insert(room.clone(), l);
            return (Ok(call), vec![]);
        }
        let call = CallId::new_random();
        let mut l = Live::new(call, true, now);
        l.record = record;
        self.rooms.insert(room.clone(), l);
        (
            Ok(call),
            vec![Effect::Store(StoreOp::CreateCall(Call::adhoc(
                call.0,
                room.as_str(),
            )))],
        )
    }

    /// A participant is in (after a successful SFU join).
    pub fn joined(&mut self, room: &RoomName, p: Joining, at: DateTime<Utc>) -> Vec<Effect> {
        let mut out = Vec::new();
        if p.participant.0.is_nil() {
            out.push(Effect::Invalid {
                what: "join",
                detail: format!("participant of room {room} has no valid id"),
            });
            return out;
        }
        let Some(l) = self.rooms.get_mut(room) else {
            out.push(Effect::Invalid {
                what: "join",
                detail: format!(
                    "participant {} joined room {room} with no call",
                    p.participant
                ),
            });
            return out;
        };
        if !l.present.insert(p.participant) {
            return out; // duplicate
        }
        out.push(Effect::Store(StoreOp::ParticipantJoined(Participant {
            id: p.participant.0,
            call_id: l.call.0,
            kind: p.kind.as_str().into(),
            role: p.role.as_str().into(),
            identity: p.identity,
            display_name: p.display_name,
            joined_at: at,
            left_at: None,
            leave_reason: None,
        })));
        if !l.activated {
            l.activated = true;
            out.push(Effect::Store(StoreOp::CallActive { call_id: l.call.0 }));
        }
        if l.present.len() >= 2 && !l.answered {
            l.answered = true;
            out.push(Effect::Store(StoreOp::CallAnswered {
                call_id: l.call.0,
                at,
            }));
        }
        self.participants.insert(p.participant, room.clone());
        if let Some((_, left_at, reason)) = self.left_early.remove(&p.participant) {
            out.extend(self.left(p.participant, reason, left_at.max(at)));
        }
        out
    }

    fn left(
        &mut self,
        participant: ParticipantId,
        reason: media::LeaveReason,
        at: DateTime<Utc>,
    ) -> Vec<Effect> {
        let Some(room) = self.participants.remove(&participant) else {
            return vec![];
        };
        if let Some(l) = self.rooms.get_mut(&room) {
            l.present.remove(&participant);
        }
        vec![Effect::Store(StoreOp::ParticipantLeft {
            id: participant.0,
            at,
            reason: leave_reason(reason).as_str().into(),
        })]
    }

    /// End a call (call-end): everyone is removed, the recording stops, and once the room is
    /// empty and the recording final (or `end_timeout` passed) the call row is ended and
    /// waiter `w` told. Returns whether the call was still on here, and the waiter's number.
    pub fn end(
        &mut self,
        call: CallId,
        room: &RoomName,
        reason: &str,
        now: Instant,
        at: DateTime<Utc>,
    ) -> (bool, u64, Vec<Effect>) {
        let w = self.next_waiter;
        self.next_waiter += 1;
        let l = self
            .rooms
            .entry(room.clone())
            .or_insert_with(|| Live::new(call, false, now));
        let fresh = !std::mem::replace(&mut l.ended, true);
        l.since = now;
        l.waiters.push(w);
        if l.end_reason.is_none() || fresh {
            l.end_reason = Some(reason.to_string());
        }
        l.end_deadline.get_or_insert(now + self.cfg.end_timeout);
        let mut out = vec![Effect::EndRoom(room.clone())];
        if l.recording.is_some() && !l.stopping {
            l.stopping = true;
            out.push(Effect::StopRecording {
                room: room.clone(),
                reason: "call_ended",
            });
        }
        out.extend(self.complete_end(room, at, false));
        (fresh, w, out)
    }

    /// Tell call-end waiters once the room is empty and the recording final (or `force`).
    fn complete_end(&mut self, room: &RoomName, at: DateTime<Utc>, force: bool) -> Vec<Effect> {
        let Some(l) = self.rooms.get_mut(room) else {
            return vec![];
        };
        if l.waiters.is_empty() || (!force && (l.open || l.recording.is_some())) {
            return vec![];
        }
        let reason = l
            .end_reason
            .clone()
            .unwrap_or_else(|| EndReason::Hangup.as_str().into());
        l.end_deadline = None;
        let call = l.call;
        std::mem::take(&mut l.waiters)
            .into_iter()
            .map(|waiter| Effect::EndWritten {
                waiter,
                op: call_ended(call, at, &reason),
            })
            .collect()
    }

    // ------------------------------------------------------------------ room events

    /// What the SFU reported. `closing`: the server is shutting down.
    pub fn room_event(
        &mut self,
        ev: RoomEvent,
        closing: bool,
        now: Instant,
        at: DateTime<Utc>,
    ) -> Vec<Effect> {
        match ev {
            RoomEvent::Opened(room) => {
                let room = RoomName(room);
                let mut out = Vec::new();
                if !self.rooms.contains_key(&room) {
                    // Opened without an admission (nothing in this server does that today):
                    // the room still gets a call, and its recording.
                    let (_, eff) = self.admit(&room, None, None, now);
                    out.extend(eff);
                }
                if let Some(l) = self.rooms.get_mut(&room) {
                    l.open = true;
                    let want = l.record.unwrap_or(self.cfg.record_by_default);
                    if want && l.recording.is_none() && !l.ended {
                        out.push(Effect::StartRecording {
                            room: room.clone(),
                            call: l.call,
                        });
                    }
                }
                out
            }
            RoomEvent::Listening { room, participant } => vec![Effect::Listening {
                room: RoomName(room),
                participant,
            }],
            RoomEvent::Left {
                participant,
                reason,
                ..
            } => match participant.parse::<ParticipantId>() {
                Err(e) => vec![Effect::Invalid {
                    what: "leave",
                    detail: e.to_string(),
                }],
                Ok(p) if self.participants.contains_key(&p) => self.left(p, reason, at),
                Ok(p) => {
                    self.left_early.insert(p, (now, at, reason));
                    vec![]
                }
            },
            RoomEvent::Closed(room) => {
                let room = RoomName(room);
                let Some(l) = self.rooms.get_mut(&room) else {
                    return vec![];
                };
                l.open = false;
                let mut out = Vec::new();
                if l.recording.is_some() && !l.stopping {
                    l.stopping = true;
                    out.push(Effect::StopRecording {
                        room: room.clone(),
                        reason: "room_closed",
                    });
                }
                if !l.ended {
                    l.ended = true;
                    l.since = now;
                    let reason = if closing {
                        EndReason::ServerShutdown
                    } else {
                        EndReason::Completed
                    };
                    out.push(Effect::Store(call_ended(l.call, at, reason.as_str())));
                }
                out.extend(self.complete_end(&room, at, false));
                out
            }
        }
    }

    // ------------------------------------------------------------------ recordings

    /// Switch a room's recording (signaling or the API). A room that is not open keeps the
    /// choice for when it opens.
    pub fn set_recording(&mut self, room: &RoomName, enabled: bool, now: Instant) -> Vec<Effect> {
        let Some(l) = self.rooms.get_mut(room).filter(|l| !l.ended || l.open) else {
            // No call in this room now: the choice waits for the next admission.
            self.prefs.insert(room.clone(), (enabled, now));
            return vec![];
        };
        l.record = Some(enabled);
        if !l.open || l.ended {
            return vec![];
        }
        match (enabled, l.recording.is_some() && !l.stopping) {
            (true, false) if l.recording.is_none() => vec![Effect::StartRecording {
                room: room.clone(),
                call: l.call,
            }],
            (false, true) => {
                l.stopping = true;
                vec![Effect::StopRecording {
                    room: room.clone(),
                    reason: "requested",
                }]
            }
            _ => vec![],
        }
    }

    /// The coordinator started a recording of `room` for `call`.
    pub fn recording_started(
        &mut self,
        room: &RoomName,
        call: CallId,
        rec: RecordingId,
        started: SystemTime,
    ) -> Vec<Effect> {
        if let Some(l) = self.rooms.get_mut(room) {
            l.recording = Some(rec);
            l.stopping = false;
        }
        self.recordings.insert(
            rec,
            RecInfo {
                call,
                room: room.clone(),
                started,
            },
        );
        vec![Effect::Store(StoreOp::Recording(RecordingRow {
            id: rec.0,
            call_id: call.0,
            source: "tap".into(),
            status: RecordingStatus::Recording.as_str().into(),
            codec: "flac".into(),
            flac_key: None,
            mp3_key: None,
            duration_sec: None,
            channels: Some(2),
            sample_rate: Some(48_000),
            flac_bytes: None,
            mp3_bytes: None,
            flac_sha256: None,
            mp3_sha256: None,
            upload_sha256: None,
            error: None,
            started_at: utc(started),
            ready_at: None,
        }))]
    }

    /// The recording of `room` is over for call-end's purposes (final, failed, or its stop
    /// timed out).
    fn recording_done(
        &mut self,
        room: &RoomName,
        rec: RecordingId,
        at: DateTime<Utc>,
    ) -> Vec<Effect> {
        let Some(l) = self.rooms.get_mut(room) else {
            return vec![];
        };
        if l.recording != Some(rec) {
            return vec![];
        }
        l.recording = None;
        l.stopping = false;
        self.complete_end(room, at, false)
    }

    /// The stop of `rec` finished (`timed_out`: it did not finalise in time; its result may
    /// still come).
    pub fn stop_finished(
        &mut self,
        room: &RoomName,
        rec: RecordingId,
        at: DateTime<Utc>,
    ) -> Vec<Effect> {
        self.recording_done(room, rec, at)
    }

    /// What a recording reported. `storage_key` turns a file path into its storage key.
    pub fn recording_event(
        &mut self,
        ev: RecordingEvent,
        at: DateTime<Utc>,
        storage_key: &dyn Fn(&str) -> String,
    ) -> Vec<Effect> {
        match ev {
            // Observers' copy; the coordinator learnt it from the start itself.
            RecordingEvent::Started { .. } => vec![],
            RecordingEvent::Consent {
                recording_id,
                kind,
                offset_ms,
                ..
            } => {
                let Ok(rec) = recording_id.parse::<RecordingId>() else {
                    return vec![Effect::Invalid {
                        what: "consent event",
                        detail: format!("recording id `{recording_id}`"),
                    }];
                };
                let Some(info) = self.recordings.get(&rec) else {
                    return vec![Effect::Invalid {
                        what: "consent event",
                        detail: format!("unknown recording {rec}"),
                    }];
                };
                let Some(kind) = ConsentKind::from_recorder(&kind) else {
                    return vec![Effect::Invalid {
                        what: "consent event",
                        detail: format!("kind `{kind}`"),
                    }];
                };
                vec![Effect::Store(StoreOp::Consent(consent_row(
                    info.call,
                    rec,
                    kind,
                    offset_ms,
                    info.started,
                )))]
            }
            RecordingEvent::Ready { room, summary } => {
                let (Ok(call), Ok(rec)) = (
                    summary.call_id.parse::<CallId>(),
                    summary.recording_id.parse::<RecordingId>(),
                ) else {
                    return vec![Effect::Invalid {
                        what: "finished recording",
                        detail: format!(
                            "recording `{}` of call `{}` has no valid ids; not in the database",
                            summary.recording_id, summary.call_id
                        ),
                    }];
                };
                let info = self.recordings.remove(&rec);
                let started = info.as_ref().map(|i| i.started).unwrap_or_else(|| {
                    SystemTime::now() - Duration::from_millis(summary.duration_ms)
                });
                let mut out = vec![Effect::Store(StoreOp::Recording(RecordingRow {
                    id: rec.0,
                    call_id: call.0,
                    source: "tap".into(),
                    status: RecordingStatus::Ready.as_str().into(),
                    codec: "flac".into(),
                    flac_key: Some(storage_key(&summary.flac_path)),
                    mp3_key: Some(storage_key(&summary.mp3_path)),
                    duration_sec: Some(summary.duration_ms as f64 / 1000.0),
                    channels: Some(2),
                    sample_rate: Some(48_000),
                    flac_bytes: Some(summary.flac_bytes as i64),
                    mp3_bytes: Some(summary.mp3_bytes as i64),
                    flac_sha256: Some(summary.flac_sha256.clone()),
                    mp3_sha256: Some(summary.mp3_sha256.clone()),
                    upload_sha256: None,
                    error: None,
                    started_at: utc(started),
                    ready_at: Some(at),
                }))];
                // Every consent event of the recording (the live ones are already queued
                // under the same ids; these add the ones rendered at the very end).
                for (kind, offset_ms) in &summary.consent {
                    match ConsentKind::from_recorder(kind) {
                        Some(k) => out.push(Effect::Store(StoreOp::Consent(consent_row(
                            call, rec, k, *offset_ms, started,
                        )))),
                        None => out.push(Effect::Invalid {
                            what: "consent event",
                            detail: format!("kind `{kind}`"),
                        }),
                    }
                }
                let room = info.map(|i| i.room).unwrap_or(RoomName(room));
                out.extend(self.recording_done(&room, rec, at));
                out
            }
            RecordingEvent::Failed {
                room,
                recording_id,
                error,
            } => {
                let Ok(rec) = recording_id.parse::<RecordingId>() else {
                    return vec![Effect::Invalid {
                        what: "failed recording",
                        detail: format!("recording id `{recording_id}`: {error}"),
                    }];
                };
                let info = self.recordings.remove(&rec);
                let mut out = vec![Effect::Store(StoreOp::RecordingFailed { id: rec.0, error })];
                let room = info.map(|i| i.room).unwrap_or(RoomName(room));
                out.extend(self.recording_done(&room, rec, at));
                out
            }
        }
    }

    // ------------------------------------------------------------------ the clock

    /// Once a second: abandoned calls, call-ends that waited too long, forgetting.
    pub fn tick(&mut self, now: Instant, at: DateTime<Utc>) -> Vec<Effect> {
        let mut out = Vec::new();
        let mut overdue = Vec::new();
        for (room, l) in self.rooms.iter_mut() {
            // Made by call-create (or admitted ad hoc) and never joined.
            if !l.activated
                && !l.ended
                && !l.open
                && now.duration_since(l.since) >= self.cfg.abandon_after
            {
                l.ended = true;
                l.since = now;
                out.push(Effect::Store(call_ended(
                    l.call,
                    at,
                    EndReason::Abandoned.as_str(),
                )));
            }
            if l.end_deadline.is_some_and(|d| now >= d) {
                overdue.push(room.clone());
            }
        }
        for room in overdue {
            out.push(Effect::Invalid {
                what: "call-end",
                detail: format!(
                    "room {room} did not empty or its recording did not finish in time; the call is ended anyway"
                ),
            });
            out.extend(self.complete_end(&room, at, true));
        }
        let forget = self.cfg.forget_after;
        self.rooms.retain(|_, l| {
            l.open
                || l.recording.is_some()
                || !l.waiters.is_empty()
                || !l.ended
                || now.duration_since(l.since) < forget
        });
        self.left_early
            .retain(|_, (t, _, _)| now.duration_since(*t) < Duration::from_secs(60));
        self.prefs
            .retain(|_, (_, t)| now.duration_since(*t) < forget);
        out
    }

    /// How many calls this instance holds (for tests and metrics).
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Whether the call of `room` is ended here.
    pub fn status(&self, room: &RoomName) -> Option<CallStatus> {
        self.rooms.get(room).map(|l| {
            if l.ended {
                CallStatus::Ended
            } else if l.activated {
                CallStatus::Active
            } else {
                CallStatus::Created
            }
        })
    }
}

fn consent_row(
    call: CallId,
    rec: RecordingId,
    kind: ConsentKind,
    offset_ms: u64,
    started: SystemTime,
) -> ConsentRow {
    ConsentRow {
        id: consent_id(rec, kind, offset_ms),
        call_id: call.0,
        participant_id: None,
        recording_id: Some(rec.0),
        kind: kind.as_str().into(),
        offset_ms: offset_ms as i64,
        occurred_at: utc(started + Duration::from_millis(offset_ms)),
        source: "system".into(),
        note: None,
    }
}
