//! The call book without sockets or a database: events in, effects out, store ops applied to
//! an in-memory store that keeps the same rules as the real one (inserts once, status moves
//! forward only, rows must reference their call).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use media::{LeaveReason, RoomEvent};
use uuid::Uuid;

use super::book::{Book, BookConfig, Effect, Joining};
use crate::domain::{CallId, ParticipantId, ParticipantKind, RecordingId, Role, RoomName};
use crate::recording::{RecordingEvent, SummaryView};
use crate::store::{Call, StoreOp};

#[derive(Default, Debug)]
struct MemStore {
    calls: HashMap<Uuid, (String, Option<String>)>,
    participants: HashMap<Uuid, (Uuid, Option<String>)>,
    recordings: HashMap<Uuid, (Uuid, String)>,
    consent: HashMap<Uuid, Uuid>,
    ops: Vec<&'static str>,
}

impl MemStore {
    fn apply(&mut self, op: StoreOp) {
        self.ops.push(op.name());
        match op {
            StoreOp::CreateCall(c) => {
                self.calls.entry(c.id).or_insert(("created".into(), None));
            }
            StoreOp::CallActive { call_id } => {
                let c = self.calls.get_mut(&call_id).expect("call exists");
                if c.0 == "created" {
                    c.0 = "active".into();
                }
            }
            StoreOp::CallAnswered { call_id, .. } => {
                assert!(self.calls.contains_key(&call_id));
            }
            StoreOp::CallEnded {
                call_id, reason, ..
            } => {
                let c = self.calls.get_mut(&call_id).expect("call exists");
                if c.0 != "ended" {
                    *c = ("ended".into(), Some(reason));
                }
            }
            StoreOp::ParticipantJoined(p) => {
                assert!(
                    self.calls.contains_key(&p.call_id),
                    "participant of a known call"
                );
                self.participants.entry(p.id).or_insert((p.call_id, None));
            }
            StoreOp::ParticipantLeft { id, reason, .. } => {
                let p = self.participants.get_mut(&id).expect("left after joined");
                p.1.get_or_insert(reason);
            }
            StoreOp::Recording(r) => {
                assert!(
                    self.calls.contains_key(&r.call_id),
                    "recording of a known call"
                );
                let e = self
                    .recordings
                    .entry(r.id)
                    .or_insert((r.call_id, r.status.clone()));
                if e.1 == "recording" {
                    e.1 = r.status;
                }
            }
            StoreOp::RecordingFailed { id, .. } => {
                let r = self.recordings.get_mut(&id).expect("recording exists");
                if r.1 == "recording" {
                    r.1 = "failed".into();
                }
            }
            StoreOp::Consent(c) => {
                assert!(self.calls.contains_key(&c.call_id));
                self.consent.insert(c.id, c.call_id);
            }
            StoreOp::Sms(_) => panic!("the book writes no SMS"),
        }
    }
}

/// The book, its store, and what the coordinator would have done besides writing.
struct Harness {
    book: Book,
    store: MemStore,
    now: Instant,
    starts: Vec<(RoomName, CallId)>,
    stops: Vec<(RoomName, &'static str)>,
    ended_rooms: Vec<RoomName>,
    end_written: Vec<(u64, String)>,
    invalid: Vec<String>,
    next_recording: Option<RecordingId>,
}

fn cfg() -> BookConfig {
    BookConfig {
        record_by_default: true,
        abandon_after: Duration::from_secs(900),
        forget_after: Duration::from_secs(600),
        end_timeout: Duration::from_secs(5),
    }
}

impl Harness {
    fn new() -> Harness {
        Harness {
            book: Book::new(cfg()),
            store: MemStore::default(),
            now: Instant::now(),
            starts: vec![],
            stops: vec![],
            ended_rooms: vec![],
            end_written: vec![],
            invalid: vec![],
            next_recording: None,
        }
    }

    /// Carry out effects as the coordinator does (a start succeeds and is reported at once).
    fn run(&mut self, effects: Vec<Effect>) {
        let mut q = std::collections::VecDeque::from(effects);
        while let Some(e) = q.pop_front() {
            match e {
                Effect::Store(op) => self.store.apply(op),
                Effect::EndWritten { waiter, op } => {
                    if let StoreOp::CallEnded { reason, .. } = &op {
                        self.end_written.push((waiter, reason.clone()));
                    }
                    self.store.apply(op);
                }
                Effect::StartRecording { room, call } => {
                    let rec = RecordingId::new_random();
                    self.next_recording = Some(rec);
                    self.starts.push((room.clone(), call));
                    q.extend(
                        self.book
                            .recording_started(&room, call, rec, SystemTime::now()),
                    );
                }
                Effect::StopRecording { room, reason } => self.stops.push((room, reason)),
                Effect::EndRoom(room) => self.ended_rooms.push(room),
                Effect::Listening { .. } => {}
                Effect::Invalid { what, detail } => self.invalid.push(format!("{what}: {detail}")),
            }
        }
    }

    fn admit(&mut self, room: &str, token: Option<CallId>) -> Option<CallId> {
        let (r, eff) = self.book.admit(&room.into(), token, None, self.now);
        self.run(eff);
        r.ok()
    }

    fn room(&mut self, ev: RoomEvent) {
        let eff = self.book.room_event(ev, false, self.now, Utc::now());
        self.run(eff);
    }

    fn join(&mut self, room: &str, p: ParticipantId, role: Role) {
        let eff = self.book.joined(
            &room.into(),
            Joining {
                participant: p,
                kind: ParticipantKind::Browser,
                role,
                display_name: "x".into(),
                identity: None,
            },
            Utc::now(),
        );
        self.run(eff);
    }

    fn left(&mut self, room: &str, p: ParticipantId) {
        self.room(RoomEvent::Left {
            room: room.into(),
            participant: p.to_string(),
            reason: LeaveReason::Left,
        });
    }

    fn ready(&mut self, room: &str, call: CallId, rec: RecordingId) {
        let ev = RecordingEvent::Ready {
            room: room.into(),
            summary: Arc::new(summary(call, rec)),
        };
        let eff = self
            .book
            .recording_event(ev, Utc::now(), &|p: &str| p.to_string());
        self.run(eff);
    }

    fn tick(&mut self, after: Duration) {
        self.now += after;
        let eff = self.book.tick(self.now, Utc::now());
        self.run(eff);
    }
}

fn summary(call: CallId, rec: RecordingId) -> SummaryView {
    SummaryView {
        call_id: call.to_string(),
        recording_id: rec.to_string(),
        duration_ms: 10_000,
        flac_path: "r.flac".into(),
        mp3_path: "r.mp3".into(),
        sidecar_path: "r.json".into(),
        flac_bytes: 1,
        mp3_bytes: 1,
        flac_sha256: "0".repeat(64),
        mp3_sha256: "0".repeat(64),
        consent_events: 2,
        consent: vec![
            ("periodic_beep".into(), 0),
            ("periodic_beep".into(), 15_000),
        ],
        recovered: false,
    }
}

#[test]
fn a_call_from_admission_to_ready_recording() {
    let mut h = Harness::new();
    let call = h.admit("r1", None).expect("admitted");
    h.room(RoomEvent::Opened("r1".into()));
    assert_eq!(h.starts, vec![(RoomName::from("r1"), call)]);
    let rec = h.next_recording.expect("recording");
    let (a, b) = (ParticipantId::new_random(), ParticipantId::new_random());
    h.join("r1", a, Role::Agent);
    h.join("r1", b, Role::Customer);
    h.left("r1", a);
    h.left("r1", b);
    h.room(RoomEvent::Closed("r1".into()));
    assert_eq!(h.stops, vec![(RoomName::from("r1"), "room_closed")]);
    h.ready("r1", call, rec);
    let c = &h.store.calls[&call.0];
    assert_eq!(c, &("ended".to_string(), Some("completed".to_string())));
    assert!(
        h.store
            .participants
            .values()
            .all(|p| p.1.as_deref() == Some("left"))
    );
    assert_eq!(h.store.participants.len(), 2);
    assert_eq!(h.store.recordings[&rec.0].1, "ready");
    assert_eq!(h.store.consent.len(), 2);
    assert!(h.invalid.is_empty(), "{:?}", h.invalid);
    assert_eq!(
        h.store
            .ops
            .iter()
            .filter(|o| **o == "call_answered")
            .count(),
        1
    );
}

#[test]
fn out_of_order_and_duplicate_events() {
    let mut h = Harness::new();
    let call = h.admit("r2", None).expect("admitted");
    h.room(RoomEvent::Opened("r2".into()));
    let a = ParticipantId::new_random();
    // The SFU's leave overtakes the admission's join report.
    h.left("r2", a);
    assert!(h.store.participants.is_empty());
    h.join("r2", a, Role::Agent);
    assert_eq!(h.store.participants[&a.0].1.as_deref(), Some("left"));
    // Duplicates change nothing.
    h.join("r2", a, Role::Agent);
    h.left("r2", a);
    h.room(RoomEvent::Closed("r2".into()));
    h.room(RoomEvent::Closed("r2".into()));
    assert_eq!(
        h.store.ops.iter().filter(|o| **o == "call_ended").count(),
        1,
        "{:?}",
        h.store.ops
    );
    assert_eq!(h.store.calls[&call.0].0, "ended");
    // A consent event for a recording nobody knows, and a leave with a bad id: counted.
    let eff = h.book.recording_event(
        RecordingEvent::Consent {
            room: "r2".into(),
            recording_id: Uuid::new_v4().to_string(),
            kind: "periodic_beep".into(),
            offset_ms: 0,
        },
        Utc::now(),
        &|p: &str| p.to_string(),
    );
    h.run(eff);
    h.room(RoomEvent::Left {
        room: "r2".into(),
        participant: "not-an-id".into(),
        reason: LeaveReason::Left,
    });
    assert_eq!(h.invalid.len(), 2, "{:?}", h.invalid);
    // The finished ad-hoc room's name can be used again: a new call.
    let again = h.admit("r2", None).expect("admitted again");
    assert_ne!(again, call);
}

#[test]
fn a_recording_that_fails_is_marked_and_call_end_still_completes() {
    let mut h = Harness::new();
    let call = CallId::new_random();
    h.book.created(&Call::adhoc(call.0, "call-x"), h.now);
    h.store
        .apply(StoreOp::CreateCall(Call::adhoc(call.0, "call-x")));
    assert_eq!(h.admit("call-x", Some(call)), Some(call));
    h.room(RoomEvent::Opened("call-x".into()));
    let rec = h.next_recording.expect("recording");
    let p = ParticipantId::new_random();
    h.join("call-x", p, Role::Agent);
    let (fresh, waiter, eff) =
        h.book
            .end(call, &"call-x".into(), "ended_by_api", h.now, Utc::now());
    assert!(fresh);
    h.run(eff);
    assert_eq!(h.ended_rooms, vec![RoomName::from("call-x")]);
    assert_eq!(h.stops, vec![(RoomName::from("call-x"), "call_ended")]);
    assert!(
        h.end_written.is_empty(),
        "waits for the room and the recording"
    );
    h.left("call-x", p);
    h.room(RoomEvent::Closed("call-x".into()));
    assert!(h.end_written.is_empty(), "still waits for the recording");
    let eff = h.book.recording_event(
        RecordingEvent::Failed {
            room: "call-x".into(),
            recording_id: rec.to_string(),
            error: "disk full".into(),
        },
        Utc::now(),
        &|p: &str| p.to_string(),
    );
    h.run(eff);
    assert_eq!(h.store.recordings[&rec.0].1, "failed");
    assert_eq!(h.end_written, vec![(waiter, "ended_by_api".to_string())]);
    assert_eq!(
        h.store.calls[&call.0],
        ("ended".to_string(), Some("ended_by_api".to_string()))
    );
    // No "completed" end was written when the room closed: the API's reason stands.
    assert_eq!(
        h.store.ops.iter().filter(|o| **o == "call_ended").count(),
        1
    );
    // Joins with the call's token are refused from now on.
    assert_eq!(h.admit("call-x", Some(call)), None);
}

#[test]
fn call_end_during_a_join() {
    let mut h = Harness::new();
    let call = CallId::new_random();
    h.store
        .apply(StoreOp::CreateCall(Call::adhoc(call.0, "call-j")));
    h.book.created(&Call::adhoc(call.0, "call-j"), h.now);
    // Admitted, then the call ends before the SFU join is reported.
    assert_eq!(h.admit("call-j", Some(call)), Some(call));
    let (_, waiter, eff) = h
        .book
        .end(call, &"call-j".into(), "hangup", h.now, Utc::now());
    h.run(eff);
    // Nobody was in the room and nothing recorded: the end is written at once.
    assert_eq!(h.end_written, vec![(waiter, "hangup".to_string())]);
    // The join that was in flight still lands (as a row), and its leave follows.
    h.room(RoomEvent::Opened("call-j".into()));
    assert!(h.starts.is_empty(), "an ended call is not recorded");
    let p = ParticipantId::new_random();
    h.join("call-j", p, Role::Customer);
    h.left("call-j", p);
    h.room(RoomEvent::Closed("call-j".into()));
    assert_eq!(h.store.participants[&p.0].1.as_deref(), Some("left"));
    assert_eq!(h.store.calls[&call.0].0, "ended");
    assert_eq!(h.admit("call-j", Some(call)), None);
}

#[test]
fn calls_never_joined_are_abandoned_and_stuck_ends_give_up() {
    let mut h = Harness::new();
    let call = CallId::new_random();
    h.store
        .apply(StoreOp::CreateCall(Call::adhoc(call.0, "call-a")));
    h.book.created(&Call::adhoc(call.0, "call-a"), h.now);
    h.tick(Duration::from_secs(899));
    assert_eq!(h.store.calls[&call.0].0, "created");
    h.tick(Duration::from_secs(2));
    assert_eq!(
        h.store.calls[&call.0],
        ("ended".to_string(), Some("abandoned".to_string()))
    );
    assert_eq!(h.admit("call-a", Some(call)), None, "joins are refused");

    // A call-end whose room never empties is written after the timeout.
    let call2 = h.admit("stuck", None).expect("admitted");
    h.room(RoomEvent::Opened("stuck".into()));
    let p = ParticipantId::new_random();
    h.join("stuck", p, Role::Agent);
    let (_, waiter, eff) = h
        .book
        .end(call2, &"stuck".into(), "hangup", h.now, Utc::now());
    h.run(eff);
    h.tick(Duration::from_secs(1));
    assert!(h.end_written.is_empty());
    h.tick(Duration::from_secs(5));
    assert_eq!(h.end_written, vec![(waiter, "hangup".to_string())]);
    assert!(h.invalid.iter().any(|i| i.contains("call-end")));
}

#[test]
fn recording_switch_before_and_during_a_call() {
    let mut h = Harness::new();
    // Chosen before the room exists: kept for its admission.
    assert!(h.book.set_recording(&"sw".into(), false, h.now).is_empty());
    h.admit("sw", None).expect("admitted");
    h.room(RoomEvent::Opened("sw".into()));
    assert!(h.starts.is_empty(), "switched off before it opened");
    let eff = h.book.set_recording(&"sw".into(), true, h.now);
    h.run(eff);
    assert_eq!(h.starts.len(), 1);
    let eff = h.book.set_recording(&"sw".into(), false, h.now);
    h.run(eff);
    assert_eq!(h.stops, vec![(RoomName::from("sw"), "requested")]);
    assert_eq!(h.book.recording_of(&"sw".into()), None);
}
