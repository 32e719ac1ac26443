//! Calls: the coordinator that owns call lifecycle.
//!
//! Everything that changes a call reaches one task, in order, over one lossless queue
//! ([`queue`]): admissions and joins (from `/ws` and WHIP, through [`Calls::admit`] and
//! [`Calls::joined`]), the SFU's room events (opened, left, closed, listening), the recordings'
//! events (consent, ready, failed), call-create, call-end and the recording switch. The task
//! keeps the state in a [`book::Book`] (pure rules, unit-tested without sockets or a database)
//! and carries out its effects: store writes in order, recordings started and stopped (a stop
//! runs in its own tracked task, so a slow finalisation never holds up other rooms), rooms
//! ended. Later features (webhooks, PSTN legs, SMS) hang off the same task.
//!
//! A call made through the API (`call-create`) owns a room named `call-{uuid}`; a room opened
//! without one (auth off, or a dev-mode token) gets an ad-hoc call at admission.

pub mod book;
pub mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use media::{RoomEvent, Sfu};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use book::{CallError, Effect, Joining};

use crate::domain::{CallId, ParticipantId, RecordingId, RoomName};
use crate::recording::{Recorders, RecordingEvent};
use crate::store::writer::{Durable, StoreHandle};
use crate::store::{Call, StoreOp, storage_key};
use book::{Book, BookConfig};
use queue::{EventReceiver, EventSender, QueueStats};

/// How many events may wait for the coordinator before async producers (admissions, the API)
/// wait too. Synchronous producers (the SFU, recording threads) never wait; see [`queue`].
pub const EVENT_QUEUE_CAPACITY: usize = 4096;

/// How long a recording may take to finalise before its stop is given up on (the recording
/// may still finish and report later).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers once the call-end's write is queued, with its durability.
type EndDone = oneshot::Receiver<oneshot::Receiver<Durable>>;

/// The coordinator's inputs.
enum Event {
    Room(RoomEvent),
    Recording(RecordingEvent),
    Created {
        call: Box<Call>,
        reply: oneshot::Sender<oneshot::Receiver<Durable>>,
    },
    Admit {
        room: RoomName,
        token_call: Option<CallId>,
        record: Option<bool>,
        reply: oneshot::Sender<Result<CallId, CallError>>,
    },
    Joined {
        room: RoomName,
        joining: Joining,
    },
    End {
        call: CallId,
        room: RoomName,
        reason: String,
        /// Whether the call was still on, and (later) the end write's durability.
        reply: oneshot::Sender<(bool, EndDone)>,
    },
    SetRecording {
        room: RoomName,
        enabled: bool,
        reply: oneshot::Sender<Option<RecordingId>>,
    },
    StopFinished {
        room: RoomName,
        recording: RecordingId,
    },
    Query(Query),
    /// A participant pressed a key (a phone leg's RFC 4733 event or SIP INFO).
    Dtmf {
        room: RoomName,
        participant: String,
        digit: char,
    },
    /// Stop every recording, wait for them, handle what is left, end.
    Shutdown(oneshot::Sender<()>),
}

enum Query {
    LiveCall(CallId, oneshot::Sender<Option<(RoomName, bool)>>),
    CallOfRoom(RoomName, oneshot::Sender<Option<CallId>>),
    CallOfNumber(String, oneshot::Sender<Option<(CallId, RoomName)>>),
    RecordingOf(RoomName, oneshot::Sender<Option<RecordingId>>),
}

/// Counters of the coordinator, for `/metrics`.
#[derive(Debug, Default)]
pub struct CoordinatorStats {
    /// Inputs that could not be used (bad ids, events for unknown recordings), logged.
    pub invalid: AtomicU64,
    /// Recordings whose stop did not finish within the timeout.
    pub stop_timeouts: AtomicU64,
    /// Calls ended as abandoned.
    pub abandoned: AtomicU64,
}

/// The handle everyone uses (cheap to clone).
#[derive(Clone)]
pub struct Calls {
    tx: EventSender<Event>,
    store: StoreHandle,
    stats: Arc<CoordinatorStats>,
}

/// What [`Calls::new`] hands to [`Calls::spawn`].
pub struct Coordinator {
    rx: EventReceiver<Event>,
    tx: EventSender<Event>,
    book: Book,
    sfu: Sfu,
    recorders: Recorders,
    store: StoreHandle,
    stats: Arc<CoordinatorStats>,
    stops: TaskTracker,
    waiters: std::collections::HashMap<u64, oneshot::Sender<oneshot::Receiver<Durable>>>,
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

/// The coordinator stopped (shutdown): nothing more is taken.
#[derive(Debug, thiserror::Error)]
#[error("the call coordinator has stopped")]
pub struct Stopped;

impl Calls {
    /// The handle and the coordinator; the SFU's and the recorders' events are routed to it
    /// from now on. Run the coordinator with [`Coordinator::run`].
    pub fn new(
        store: StoreHandle,
        sfu: Sfu,
        recorders: Recorders,
        cfg: BookConfig,
    ) -> (Calls, Coordinator) {
        let (tx, rx) = queue::channel(EVENT_QUEUE_CAPACITY);
        let room_tx = tx.clone();
        sfu.set_event_sink(Arc::new(move |ev| room_tx.push(Event::Room(ev))));
        let rec_tx = tx.clone();
        recorders.set_event_sink(Arc::new(move |ev| rec_tx.push(Event::Recording(ev))));
        let stats = Arc::new(CoordinatorStats::default());
        let calls = Calls {
            tx: tx.clone(),
            store: store.clone(),
            stats: stats.clone(),
        };
        let coordinator = Coordinator {
            rx,
            tx,
            book: Book::new(cfg),
            sfu,
            recorders,
            store,
            stats,
            stops: TaskTracker::new(),
            waiters: Default::default(),
        };
        (calls, coordinator)
    }

    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    pub fn stats(&self) -> &Arc<CoordinatorStats> {
        &self.stats
    }

    pub fn queue_stats(&self) -> &Arc<QueueStats> {
        self.tx.stats()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await;
        rx.await.map_err(|_| Stopped)
    }

    /// Create a call and its room; returns once the row is durable.
    pub async fn create(&self, req: NewCall) -> (Call, Durable) {
        let id = CallId::new_random();
        let call = Call {
            kind: req.kind,
            direction: req.direction,
            from_number: req.from_number,
            to_number: req.to_number,
            record: req.record,
            ..Call::adhoc(id.0, RoomName::for_call(id).as_str())
        };
        let durable = match self
            .ask(|reply| Event::Created {
                call: Box::new(call.clone()),
                reply,
            })
            .await
        {
            Ok(rx) => rx.await.unwrap_or(Durable::Rejected),
            Err(Stopped) => Durable::Rejected,
        };
        (call, durable)
    }

    /// The one admission path (`/ws`, WHIP, later SIP): may someone join `room`? Returns the
    /// room's call (made ad hoc when the room has none). `token_call` is the call a join token
    /// names; `record` the joiner's recording choice for a room that is not open yet.
    /// Refused when the call has ended, here or (for a call from before a restart) in the
    /// database.
    pub async fn admit(
        &self,
        room: &str,
        token_call: Option<CallId>,
        record: Option<bool>,
    ) -> Result<CallId, CallError> {
        if let Some(c) = token_call
            && self.has_ended(c).await
        {
            return Err(CallError::Ended);
        }
        self.ask(|reply| Event::Admit {
            room: RoomName::from(room),
            token_call,
            record,
            reply,
        })
        .await
        .unwrap_or(Err(CallError::Ended))
    }

    /// A participant admitted by [`Calls::admit`] is in the room.
    pub async fn joined(&self, room: &str, joining: Joining) {
        self.tx
            .send(Event::Joined {
                room: RoomName::from(room),
                joining,
            })
            .await;
    }

    /// The room of a call this instance knows, and whether it has ended.
    pub async fn live_call(&self, call: CallId) -> Option<(RoomName, bool)> {
        self.ask(|r| Event::Query(Query::LiveCall(call, r)))
            .await
            .ok()
            .flatten()
    }

    /// Whether a join for `call` (from a token) must be refused because the call has ended.
    /// Calls this instance knows answer from memory; others (created before a restart) from
    /// the database, and when it is unreachable the join is let in.
    pub async fn has_ended(&self, call: CallId) -> bool {
        if let Some((_, ended)) = self.live_call(call).await {
            return ended;
        }
        match tokio::time::timeout(Duration::from_secs(2), self.store.store.call(&call.0)).await {
            Ok(Ok(Some(c))) => c.status == crate::domain::CallStatus::Ended.as_str(),
            _ => false,
        }
    }

    /// The call id of an open (or known) room.
    pub async fn call_of_room(&self, room: &str) -> Option<CallId> {
        self.ask(|r| Event::Query(Query::CallOfRoom(RoomName::from(room), r)))
            .await
            .ok()
            .flatten()
    }

    /// The open call whose number (`+digits`) this is.
    pub async fn call_of_number(&self, number: &str) -> Option<(CallId, RoomName)> {
        self.ask(|r| Event::Query(Query::CallOfNumber(number.to_string(), r)))
            .await
            .ok()
            .flatten()
    }

    /// A participant pressed a key: a `1` is logged as its `dtmf_1` consent (once).
    pub async fn dtmf(&self, room: &str, participant: &str, digit: char) {
        self.tx
            .send(Event::Dtmf {
                room: RoomName::from(room),
                participant: participant.to_string(),
                digit,
            })
            .await;
    }

    /// The running recording of a room.
    pub async fn recording_of(&self, room: &str) -> Option<RecordingId> {
        self.ask(|r| Event::Query(Query::RecordingOf(RoomName::from(room), r)))
            .await
            .ok()
            .flatten()
    }

    /// Switch a room's recording now (open room) or for when it opens. Returns the running
    /// recording afterwards.
    pub async fn set_recording(&self, room: &str, enabled: bool) -> Option<RecordingId> {
        self.ask(|reply| Event::SetRecording {
            room: RoomName::from(room),
            enabled,
            reply,
        })
        .await
        .ok()
        .flatten()
    }

    /// End a call (call-end): participants are removed with reason `call_ended`, the
    /// recording is finalised, then the call row is ended. False if the call was already
    /// ended in this process.
    pub async fn end(&self, call: CallId, room: &str, reason: &str) -> (bool, Durable) {
        match self
            .ask(|reply| Event::End {
                call,
                room: RoomName::from(room),
                reason: reason.to_string(),
                reply,
            })
            .await
        {
            Ok((fresh, done)) => {
                let durable = match done.await {
                    Ok(d) => d.await.unwrap_or(Durable::Rejected),
                    Err(_) => Durable::Rejected,
                };
                (fresh, durable)
            }
            Err(Stopped) => (false, Durable::Rejected),
        }
    }

    /// Shutdown: stop every recording and wait until each is final and every event so far
    /// has become a store op. The coordinator ends afterwards.
    pub async fn shutdown(&self) {
        let _ = self.ask(Event::Shutdown).await;
    }
}

impl Coordinator {
    /// Run until shut down (see [`Calls::shutdown`]) or `cancel` (which skips the
    /// finalisation: only for a server that failed to start).
    pub async fn run(mut self, cancel: CancellationToken) {
        // Recordings a crash left behind report Ready/Failed through the queue.
        let recorders = self.recorders.clone();
        self.stops
            .spawn(async move { recorders.recover_pending().await });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        loop {
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(Event::Shutdown(reply)) => {
                        self.stop_all().await;
                        shutdown = Some(reply);
                        // Handle what is queued, then end.
                        self.rx.close();
                    }
                    Some(ev) => self.handle(ev),
                    None => break,
                },
                _ = tick.tick() => {
                    let eff = self.book.tick(Instant::now(), Utc::now());
                    self.apply(eff);
                }
                _ = cancel.cancelled() => break,
            }
        }
        if let Some(reply) = shutdown {
            let _ = reply.send(());
        }
    }

    /// Stop every recording and wait (bounded per recording) until they are final.
    async fn stop_all(&mut self) {
        for room in self.book.recording_rooms() {
            self.stop_recording(room, "shutdown");
        }
        // Recordings the book does not know (none expected) are stopped too.
        for room in self.recorders.active_rooms() {
            self.stop_recording(RoomName(room), "shutdown");
        }
        self.stops.close();
        self.stops.wait().await;
    }

    fn handle(&mut self, ev: Event) {
        let now = Instant::now();
        let at = Utc::now();
        let eff = match ev {
            Event::Room(ev) => self.book.room_event(ev, self.sfu.is_closing(), now, at),
            Event::Recording(ev) => {
                let root = self.recorders.config().storage_root.clone();
                let key = move |p: &str| storage_key(&root, std::path::Path::new(p));
                self.book.recording_event(ev, at, &key)
            }
            Event::Created { call, reply } => {
                self.book.created(&call, now);
                let _ = reply.send(self.store.send_durable(StoreOp::CreateCall(*call)));
                vec![]
            }
            Event::Admit {
                room,
                token_call,
                record,
                reply,
            } => {
                let (res, eff) = self.book.admit(&room, token_call, record, now);
                let _ = reply.send(res);
                eff
            }
            Event::Joined { room, joining } => self.book.joined(&room, joining, at),
            Event::Dtmf {
                room,
                participant,
                digit,
            } => match participant.parse::<ParticipantId>() {
                Ok(p) => self.book.dtmf(&room, p, digit, SystemTime::now()),
                Err(e) => {
                    self.invalid("dtmf", e.to_string());
                    vec![]
                }
            },
            Event::End {
                call,
                room,
                reason,
                reply,
            } => {
                let (fresh, waiter, eff) = self.book.end(call, &room, &reason, now, at);
                let (tx, rx) = oneshot::channel();
                self.waiters.insert(waiter, tx);
                let _ = reply.send((fresh, rx));
                eff
            }
            Event::SetRecording {
                room,
                enabled,
                reply,
            } => {
                let eff = self.book.set_recording(&room, enabled, now);
                self.apply(eff);
                let _ = reply.send(self.book.recording_of(&room));
                vec![]
            }
            Event::StopFinished { room, recording } => {
                self.book.stop_finished(&room, recording, at)
            }
            Event::Query(q) => {
                match q {
                    Query::LiveCall(c, r) => {
                        let _ = r.send(self.book.live_call(c));
                    }
                    Query::CallOfRoom(room, r) => {
                        let _ = r.send(self.book.call_of_room(&room));
                    }
                    Query::CallOfNumber(n, r) => {
                        let _ = r.send(self.book.call_of_number(&n));
                    }
                    Query::RecordingOf(room, r) => {
                        let _ = r.send(self.book.recording_of(&room));
                    }
                }
                vec![]
            }
            Event::Shutdown(_) => unreachable!("handled by run"),
        };
        self.apply(eff);
    }

    fn apply(&mut self, effects: Vec<Effect>) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(e) = queue.pop_front() {
            match e {
                Effect::Store(op) => {
                    if let StoreOp::CallEnded { reason, .. } = &op
                        && reason == crate::domain::EndReason::Abandoned.as_str()
                    {
                        self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                    }
                    self.store.send(op)
                }
                Effect::EndWritten { waiter, op } => {
                    let durable = self.store.send_durable(op);
                    if let Some(w) = self.waiters.remove(&waiter) {
                        let _ = w.send(durable);
                    }
                }
                Effect::StartRecording { room, call } => {
                    match self.recorders.start(room.as_str(), &call.to_string()) {
                        Ok((id, started)) => match id.parse::<RecordingId>() {
                            Ok(rec) => {
                                queue.extend(self.book.recording_started(&room, call, rec, started))
                            }
                            Err(e) => self.invalid("recording start", e.to_string()),
                        },
                        Err(e) => {
                            tracing::warn!(room = %room, error = %e, "recording did not start")
                        }
                    }
                }
                Effect::StopRecording { room, reason } => self.stop_recording(room, reason),
                Effect::EndRoom(room) => {
                    self.sfu
                        .end_room(room.as_str(), media::LeaveReason::CallEnded);
                }
                Effect::Listening { room, participant } => {
                    self.recorders.listening(room.as_str(), participant)
                }
                Effect::Invalid { what, detail } => self.invalid(what, detail),
            }
        }
    }

    fn invalid(&self, what: &'static str, detail: String) {
        self.stats.invalid.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(what, %detail, "call coordinator: input not usable");
    }

    /// Ask the recording to stop; a tracked task waits for it (bounded) and reports back.
    fn stop_recording(&mut self, room: RoomName, reason: &'static str) {
        let Some((id, done)) = self.recorders.stop(room.as_str(), reason) else {
            return;
        };
        let Ok(recording) = id.parse::<RecordingId>() else {
            self.invalid("recording stop", format!("recording id `{id}`"));
            return;
        };
        let tx = self.tx.clone();
        let stats = self.stats.clone();
        self.stops.spawn(async move {
            if tokio::time::timeout(STOP_TIMEOUT, done).await.is_err() {
                stats.stop_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(room = %room, recording = %recording, "recording did not finalise within 30 s");
            }
            tx.push(Event::StopFinished { room, recording });
        });
    }
}

#[cfg(test)]
mod tests;
