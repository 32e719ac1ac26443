//! Calls: which room belongs to which call, and the translation of what happens in rooms and
//! recordings into [`StoreOp`]s.
//!
//! A call made through the API (`call-create`) owns a room named `call-{uuid}`; a room opened
//! without one (auth off, or a dev-mode token) gets an ad-hoc call when it opens. Joins hand
//! over the participant (with the token's identity); the SFU's room events (left, closed) and
//! the recorder's events (started, consent, ready, failed) arrive on a listener task. All of it
//! only queues ops for the store task: nothing here waits for the database except the API's own
//! requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use media::{LeaveReason, ParticipantKind, RoomEvent, Sfu};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use crate::recording::{Recorders, RecordingEvent};
use crate::store::writer::{Durable, StoreHandle};
use crate::store::{Call, ConsentRow, Participant, RecordingRow, StoreOp, storage_key};

/// The database's word for a leave reason: the signaling protocol's.
pub fn leave_reason(r: LeaveReason) -> &'static str {
    crate::ws::leave_reason(r).as_str()
}

/// The id of a recording's consent event: the same for the live event and for the list in the
/// finished recording's summary, so the event is stored once whichever arrives first.
pub fn consent_id(recording_id: &str, kind: &str, offset_ms: u64) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("commhub/consent/{recording_id}/{kind}/{offset_ms}").as_bytes(),
    )
}

/// Room of an API call.
pub fn room_for(call_id: &Uuid) -> String {
    format!("call-{}", call_id.simple())
}

#[derive(Debug, Clone)]
struct Live {
    call_id: Uuid,
    adhoc: bool,
    /// When the entry was made, or the call ended.
    since: std::time::Instant,
    present: usize,
    activated: bool,
    answered: bool,
    ended: bool,
}

impl Live {
    fn new(call_id: Uuid, adhoc: bool) -> Self {
        Live {
            call_id,
            adhoc,
            since: std::time::Instant::now(),
            present: 0,
            activated: false,
            answered: false,
            ended: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("the call has ended")]
    Ended,
    #[error("no such call")]
    NotFound,
}

/// The registry (cheap to clone).
#[derive(Clone)]
pub struct Calls {
    inner: Arc<Inner>,
}

struct Inner {
    store: StoreHandle,
    sfu: Sfu,
    recorders: Recorders,
    rooms: Mutex<HashMap<String, Live>>,
    /// How long a join token lives: an ended (or never used) call is forgotten after this,
    /// when no token issued for it can still be valid.
    token_ttl: Duration,
    /// participant id -> call id, while present.
    participants: Mutex<HashMap<String, Uuid>>,
    /// recording id -> (call id, start), for consent events.
    recordings: Mutex<HashMap<String, (Uuid, SystemTime)>>,
    /// Asks the listener to handle everything already sent, then answer.
    drain: Mutex<Option<mpsc::UnboundedSender<oneshot::Sender<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn utc(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

/// What call-create asks for.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub kind: String,
    pub direction: String,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub record: bool,
}

impl Calls {
    pub fn new(store: StoreHandle, sfu: Sfu, recorders: Recorders, token_ttl: Duration) -> Self {
        let calls = Calls {
            inner: Arc::new(Inner {
                store,
                sfu,
                recorders: recorders.clone(),
                rooms: Mutex::new(HashMap::new()),
                token_ttl,
                participants: Mutex::new(HashMap::new()),
                recordings: Mutex::new(HashMap::new()),
                drain: Mutex::new(None),
            }),
        };
        let me = calls.clone();
        recorders.set_call_resolver(Arc::new(move |room: &str| {
            me.ensure(room, None)
                .map(|id| id.to_string())
                .unwrap_or_else(|_| room.to_string())
        }));
        calls
    }

    pub fn store(&self) -> &StoreHandle {
        &self.inner.store
    }

    /// Create a call and its room; returns once the row is durable.
    pub async fn create(&self, req: NewCall) -> (Call, Durable) {
        let id = Uuid::new_v4();
        let call = Call {
            kind: req.kind,
            direction: req.direction,
            from_number: req.from_number,
            to_number: req.to_number,
            record: req.record,
            ..Call::adhoc(id, &room_for(&id))
        };
        {
            let mut rooms = lock(&self.inner.rooms);
            let ttl = self.inner.token_ttl;
            // Forget calls that ended (or were never joined) longer ago than any token lives.
            rooms.retain(|_, l| (!l.ended && l.activated) || l.since.elapsed() < ttl);
            rooms.insert(call.room.clone(), Live::new(id, false));
        }
        self.inner.recorders.prefer(&call.room, req.record);
        let d = self
            .inner
            .store
            .write(StoreOp::CreateCall(call.clone()))
            .await;
        (call, d)
    }

    /// The call of `room`, made ad hoc when the room has none. `token_call` is the call named
    /// by a join token (a call created before a restart is not in memory).
    pub fn ensure(&self, room: &str, token_call: Option<Uuid>) -> Result<Uuid, CallError> {
        let mut rooms = lock(&self.inner.rooms);
        if let Some(l) = rooms.get(room) {
            if l.ended {
                return Err(CallError::Ended);
            }
            return Ok(l.call_id);
        }
        if let Some(id) = token_call {
            rooms.insert(room.to_string(), Live::new(id, false));
            return Ok(id);
        }
        let id = Uuid::new_v4();
        rooms.insert(room.to_string(), Live::new(id, true));
        drop(rooms);
        self.inner
            .store
            .send(StoreOp::CreateCall(Call::adhoc(id, room)));
        Ok(id)
    }

    /// The room of a call this instance knows, and whether it has ended.
    pub fn live_call(&self, call_id: &Uuid) -> Option<(String, bool)> {
        lock(&self.inner.rooms)
            .iter()
            .find(|(_, l)| l.call_id == *call_id)
            .map(|(room, l)| (room.clone(), l.ended))
    }

    /// Whether a join for `call_id` (from a token) must be refused because the call has ended.
    /// Calls this instance knows answer from memory; others (created before a restart) from
    /// the database, and when it is unreachable the join is let in.
    pub async fn has_ended(&self, call_id: &Uuid) -> bool {
        if let Some((_, ended)) = self.live_call(call_id) {
            return ended;
        }
        match tokio::time::timeout(Duration::from_secs(2), self.inner.store.store.call(call_id))
            .await
        {
            Ok(Ok(Some(c))) => c.status == "ended",
            _ => false,
        }
    }

    /// The call id of an open (or known) room.
    pub fn call_of_room(&self, room: &str) -> Option<Uuid> {
        lock(&self.inner.rooms).get(room).map(|l| l.call_id)
    }

    /// A participant is in (call after a successful SFU join).
    pub fn joined(
        &self,
        room: &str,
        participant: &str,
        kind: ParticipantKind,
        role: &str,
        display_name: &str,
        identity: Option<&str>,
    ) {
        let Ok(pid) = Uuid::parse_str(participant) else {
            return;
        };
        let mut ops = Vec::new();
        let call_id = {
            let mut rooms = lock(&self.inner.rooms);
            let Some(l) = rooms.get_mut(room) else {
                return;
            };
            l.present += 1;
            let now = Utc::now();
            ops.push(StoreOp::ParticipantJoined(Participant {
                id: pid,
                call_id: l.call_id,
                kind: match kind {
                    ParticipantKind::Whip => "whip",
                    _ if role == "pstn" => "pstn",
                    _ => "browser",
                }
                .into(),
                role: if role.is_empty() { "customer" } else { role }.into(),
                identity: identity.map(str::to_string),
                display_name: display_name.to_string(),
                joined_at: now,
                left_at: None,
                leave_reason: None,
            }));
            if !l.activated {
                l.activated = true;
                ops.push(StoreOp::CallActive { call_id: l.call_id });
            }
            if l.present >= 2 && !l.answered {
                l.answered = true;
                ops.push(StoreOp::CallAnswered {
                    call_id: l.call_id,
                    at: now,
                });
            }
            l.call_id
        };
        lock(&self.inner.participants).insert(participant.to_string(), call_id);
        for op in ops {
            self.inner.store.send(op);
        }
    }

    fn left(&self, room: &str, participant: &str, reason: LeaveReason) {
        if lock(&self.inner.participants).remove(participant).is_none() {
            return;
        }
        if let Some(l) = lock(&self.inner.rooms).get_mut(room) {
            l.present = l.present.saturating_sub(1);
        }
        if let Ok(id) = Uuid::parse_str(participant) {
            self.inner.store.send(StoreOp::ParticipantLeft {
                id,
                at: Utc::now(),
                reason: leave_reason(reason).into(),
            });
        }
    }

    fn closed(&self, room: &str) {
        let call_id = {
            let mut rooms = lock(&self.inner.rooms);
            let Some(l) = rooms.get_mut(room) else {
                return;
            };
            if l.ended {
                return;
            }
            let id = l.call_id;
            if l.adhoc {
                rooms.remove(room);
            } else {
                l.ended = true;
                l.since = std::time::Instant::now();
            }
            id
        };
        let reason = if self.inner.sfu.is_closing() {
            "server_shutdown"
        } else {
            "completed"
        };
        self.inner.store.send(StoreOp::CallEnded {
            call_id,
            at: Utc::now(),
            reason: reason.into(),
        });
    }

    /// End a call (call-end): participants are removed with reason `call_ended`, the
    /// recording is finalised, then the call row is ended. False if the call was already
    /// ended in this process.
    pub async fn end(&self, call_id: Uuid, room: &str, reason: &str) -> (bool, Durable) {
        let fresh = {
            let mut rooms = lock(&self.inner.rooms);
            let l = rooms
                .entry(room.to_string())
                .or_insert_with(|| Live::new(call_id, false));
            l.since = std::time::Instant::now();
            !std::mem::replace(&mut l.ended, true)
        };
        self.inner.sfu.end_room(room, LeaveReason::CallEnded);
        // Recording first, so its files are final when the caller hears back.
        self.inner.recorders.stop(room, "call_ended").await;
        // Let the participants' leaves reach the store before the end.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.inner.sfu.participants(room).is_some() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The recording's last events and the leaves become ops before the end.
        self.drain().await;
        let d = self
            .inner
            .store
            .write(StoreOp::CallEnded {
                call_id,
                at: Utc::now(),
                reason: reason.to_string(),
            })
            .await;
        (fresh, d)
    }

    /// Follow the SFU's rooms and the recorder until shutdown; returns when both are done.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut rooms = self.inner.sfu.room_events();
        let mut recs = self.inner.recorders.events();
        let (drain_tx, mut drain_rx) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
        *lock(&self.inner.drain) = Some(drain_tx);
        tokio::spawn(async move {
            let (mut rooms_open, mut recs_open) = (true, true);
            while rooms_open || recs_open {
                tokio::select! {
                    Some(ack) = drain_rx.recv() => {
                        while let Ok(ev) = rooms.try_recv() {
                            me.room_event(ev);
                        }
                        while let Ok(ev) = recs.try_recv() {
                            me.recording_event(ev);
                        }
                        let _ = ack.send(());
                    }
                    ev = rooms.recv(), if rooms_open => match ev {
                        Ok(ev) => me.room_event(ev),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::error!(missed = n, "call registry missed room events");
                        }
                        Err(broadcast::error::RecvError::Closed) => rooms_open = false,
                    },
                    ev = recs.recv(), if recs_open => match ev {
                        Ok(e) => me.recording_event(e),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::error!(missed = n, "call registry missed recording events");
                        }
                        Err(broadcast::error::RecvError::Closed) => recs_open = false,
                    },
                }
            }
        })
    }

    /// Handle every room and recording event sent so far (shutdown, before the store's last
    /// flush).
    pub async fn drain(&self) {
        let tx = lock(&self.inner.drain).clone();
        if let Some(tx) = tx {
            let (ack, done) = oneshot::channel();
            if tx.send(ack).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
            }
        }
    }

    fn room_event(&self, ev: RoomEvent) {
        match ev {
            RoomEvent::Left {
                room,
                participant,
                reason,
            } => self.left(&room, &participant, reason),
            RoomEvent::Closed(room) => self.closed(&room),
            _ => {}
        }
    }

    /// Translate one recording event. Public for tests of the mapping.
    pub fn recording_event(&self, e: RecordingEvent) {
        let root = self.inner.recorders.config().storage_root.clone();
        match e {
            RecordingEvent::Started {
                call_id,
                recording_id,
                at,
                ..
            } => {
                let (Ok(cid), Ok(rid)) =
                    (Uuid::parse_str(&call_id), Uuid::parse_str(&recording_id))
                else {
                    return;
                };
                lock(&self.inner.recordings).insert(recording_id, (cid, at));
                self.inner.store.send(StoreOp::Recording(RecordingRow {
                    id: rid,
                    call_id: cid,
                    source: "tap".into(),
                    status: "recording".into(),
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
                    started_at: utc(at),
                    ready_at: None,
                }));
            }
            RecordingEvent::Consent {
                recording_id,
                kind,
                offset_ms,
                ..
            } => {
                let Some((cid, start)) = lock(&self.inner.recordings).get(&recording_id).copied()
                else {
                    return;
                };
                let kind = match kind.as_str() {
                    "announcement" | "ivr_announcement" => "ivr_announcement",
                    "beep" | "periodic_beep" => "periodic_beep",
                    _ => return,
                };
                self.inner.store.send(StoreOp::Consent(ConsentRow {
                    id: consent_id(&recording_id, kind, offset_ms),
                    call_id: cid,
                    participant_id: None,
                    recording_id: Uuid::parse_str(&recording_id).ok(),
                    kind: kind.into(),
                    offset_ms: offset_ms as i64,
                    occurred_at: utc(start + Duration::from_millis(offset_ms)),
                    source: "system".into(),
                    note: None,
                }));
            }
            RecordingEvent::Ready { summary, .. } => {
                let (Ok(cid), Ok(rid)) = (
                    Uuid::parse_str(&summary.call_id),
                    Uuid::parse_str(&summary.recording_id),
                ) else {
                    tracing::warn!(recording = %summary.recording_id, "a finished recording has no call id; not in the database");
                    return;
                };
                let started = lock(&self.inner.recordings)
                    .remove(&summary.recording_id)
                    .map(|(_, t)| t)
                    .unwrap_or_else(|| {
                        SystemTime::now() - Duration::from_millis(summary.duration_ms)
                    });
                self.inner.store.send(StoreOp::Recording(RecordingRow {
                    id: rid,
                    call_id: cid,
                    source: "tap".into(),
                    status: "ready".into(),
                    codec: "flac".into(),
                    flac_key: Some(storage_key(&root, std::path::Path::new(&summary.flac_path))),
                    mp3_key: Some(storage_key(&root, std::path::Path::new(&summary.mp3_path))),
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
                    ready_at: Some(Utc::now()),
                }));
                // Every consent event of the recording (the live ones are already queued under
                // the same ids; these add the ones rendered at the very end).
                for (kind, offset_ms) in &summary.consent {
                    self.inner.store.send(StoreOp::Consent(ConsentRow {
                        id: consent_id(&summary.recording_id, kind, *offset_ms),
                        call_id: cid,
                        participant_id: None,
                        recording_id: Some(rid),
                        kind: kind.clone(),
                        offset_ms: *offset_ms as i64,
                        occurred_at: utc(started + Duration::from_millis(*offset_ms)),
                        source: "system".into(),
                        note: None,
                    }));
                }
            }
            RecordingEvent::Failed {
                recording_id,
                error,
                ..
            } => {
                lock(&self.inner.recordings).remove(&recording_id);
                if let Ok(rid) = Uuid::parse_str(&recording_id) {
                    self.inner
                        .store
                        .send(StoreOp::RecordingFailed { id: rid, error });
                }
            }
        }
    }
}
