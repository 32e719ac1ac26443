//! Recording wiring: connects a room's tap to a `recorder::Recording`, plays the consent
//! announcement and periodic beeps into the room through the SFU's system source, and reports
//! recording events (consent / ready / failed) to one sink: the call coordinator, which decides
//! when recordings start and stop (`crate::calls`). Every event reaches the sink: it is called
//! for each, in order, from the recording's thread.
//!
//! Threading: each recording runs its encoder on its own OS thread (CPU-heavy, and the encoders
//! are not async); an async forwarder feeds it packets from the tap and participant details from
//! the SFU. The forwarder never blocks the room: the tap drops (and counts) what does not fit.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use media::{ParticipantEvent, Sfu};
use recorder::{ConsentEvent, RecorderPacket, Recording, RecordingConfig, RecordingMeta, Summary};
use serde::Serialize;
use signaling::ServerMessage;
use tokio::sync::{mpsc, oneshot};

/// What happened to a recording.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RecordingEvent {
    /// Reported to observers only: the coordinator starts recordings and learns this from
    /// [`Recorders::start`]'s result.
    Started {
        room: String,
        call_id: String,
        recording_id: String,
        #[serde(with = "unix_ms")]
        at: SystemTime,
    },
    Consent {
        room: String,
        recording_id: String,
        kind: String,
        offset_ms: u64,
    },
    Ready {
        room: String,
        summary: Arc<SummaryView>,
    },
    Failed {
        room: String,
        recording_id: String,
        error: String,
    },
}

/// The parts of a finished recording that consumers need.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryView {
    pub call_id: String,
    pub recording_id: String,
    pub duration_ms: u64,
    pub flac_path: String,
    pub mp3_path: String,
    pub sidecar_path: String,
    pub flac_bytes: u64,
    pub mp3_bytes: u64,
    pub flac_sha256: String,
    pub mp3_sha256: String,
    pub consent_events: usize,
    /// Every consent event the recording holds: (kind, offset in ms). Includes those rendered
    /// by the last `finish` (and by a recovery), which no `Consent` event reported.
    pub consent: Vec<(String, u64)>,
    pub recovered: bool,
}

impl From<&Summary> for SummaryView {
    fn from(s: &Summary) -> Self {
        SummaryView {
            call_id: s.meta.call_id.clone(),
            recording_id: s.meta.recording_id.clone(),
            duration_ms: s.duration.as_millis() as u64,
            flac_path: s.flac_path.display().to_string(),
            mp3_path: s.mp3_path.display().to_string(),
            sidecar_path: s.sidecar_path.display().to_string(),
            flac_bytes: s.flac_bytes,
            mp3_bytes: s.mp3_bytes,
            flac_sha256: s.flac_sha256.clone(),
            mp3_sha256: s.mp3_sha256.clone(),
            consent_events: s.consent_events.len(),
            consent: s
                .consent_events
                .iter()
                .map(|e| (e.kind.as_str().to_string(), e.offset.as_millis() as u64))
                .collect(),
            recovered: s.recovered,
        }
    }
}

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        s.serialize_u64(ms)
    }
}

enum Cmd {
    Participant {
        id: String,
        role: String,
        name: String,
        at: SystemTime,
    },
    Packet(RecorderPacket),
    Stop(SystemTime),
}

struct Active {
    recording_id: String,
    stop: oneshot::Sender<&'static str>,
    done: tokio::task::JoinHandle<()>,
    /// Participants whose subscribe connection came up: they hear the announcement.
    listening: mpsc::UnboundedSender<String>,
}

/// The consumer of [`RecordingEvent`]s. Called from recording threads; must not block.
pub type RecordingSink = Arc<dyn Fn(RecordingEvent) + Send + Sync>;

/// The sink (the coordinator: every event, in order) and observers (tests and tools that watch
/// recordings; a copy, lossy when an observer lags, never used for state).
#[derive(Clone)]
struct Emitter {
    sink: Arc<std::sync::OnceLock<RecordingSink>>,
    observers: tokio::sync::broadcast::Sender<RecordingEvent>,
}

impl Default for Emitter {
    fn default() -> Self {
        Emitter {
            sink: Default::default(),
            observers: tokio::sync::broadcast::channel(256).0,
        }
    }
}

impl Emitter {
    fn observe(&self, ev: RecordingEvent) {
        if self.observers.receiver_count() > 0 {
            let _ = self.observers.send(ev);
        }
    }

    fn emit(&self, ev: RecordingEvent) {
        if self.observers.receiver_count() > 0 {
            let _ = self.observers.send(ev.clone());
        }
        match self.sink.get() {
            Some(f) => f(ev),
            None => tracing::error!("recording event with no consumer set"),
        }
    }
}

/// Starts, stops and finalises recordings of rooms.
#[derive(Clone)]
pub struct Recorders {
    inner: Arc<Inner>,
}

struct Inner {
    sfu: Sfu,
    cfg: RecordingConfig,
    active: Mutex<HashMap<String, Active>>,
    events: Emitter,
    beep_frames: Arc<Vec<Bytes>>,
    announcement_frames: Arc<Vec<Bytes>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorders {
    pub fn new(sfu: Sfu, cfg: RecordingConfig) -> Self {
        let frames = |pcm: &[i16]| -> Arc<Vec<Bytes>> {
            match recorder::encode_opus_frames(pcm) {
                Ok(f) => Arc::new(f.into_iter().map(Bytes::from).collect()),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode consent audio");
                    Arc::new(Vec::new())
                }
            }
        };
        let beep_frames = frames(&recorder::beep_pcm(&cfg.beep));
        let announcement_frames = match &cfg.announcement {
            Some(pcm) => frames(pcm),
            None => Arc::new(Vec::new()),
        };
        Recorders {
            inner: Arc::new(Inner {
                sfu,
                cfg,
                active: Mutex::new(HashMap::new()),
                events: Emitter::default(),
                beep_frames,
                announcement_frames,
            }),
        }
    }

    /// Send every recording event from now on to `sink`. Only the first sink set is used.
    pub fn set_event_sink(&self, sink: RecordingSink) -> bool {
        self.inner.events.sink.set(sink).is_ok()
    }

    /// A copy of the recording events from now on, for observers (tests, tools). Lossy when
    /// the observer lags; the coordinator gets every event through its sink.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<RecordingEvent> {
        self.inner.events.observers.subscribe()
    }

    pub fn config(&self) -> &RecordingConfig {
        &self.inner.cfg
    }

    /// The recording id of a room's running recording.
    pub fn active(&self, room: &str) -> Option<String> {
        lock(&self.inner.active)
            .get(room)
            .map(|a| a.recording_id.clone())
    }

    /// Rooms with a running recording.
    pub fn active_rooms(&self) -> Vec<String> {
        lock(&self.inner.active).keys().cloned().collect()
    }

    /// A participant of `room` now hears the room: play it the announcement (if the room is
    /// being recorded).
    pub fn listening(&self, room: &str, participant: String) {
        if let Some(a) = lock(&self.inner.active).get(room) {
            let _ = a.listening.send(participant);
        }
    }

    /// Finish the recordings a crash left behind; each reports `Ready` or `Failed`.
    pub async fn recover_pending(&self) {
        let cfg = self.inner.cfg.clone();
        let journals = recorder::pending_journals(&cfg.storage_root);
        if journals.is_empty() {
            return;
        }
        tracing::info!(
            count = journals.len(),
            "recovering recordings left by a crash"
        );
        let events = self.inner.events.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for j in journals {
                match recorder::recover(&j, &cfg) {
                    Ok(s) => {
                        tracing::info!(recording = %s.meta.recording_id, "recovered recording");
                        events.emit(RecordingEvent::Ready {
                            room: s.meta.room.clone(),
                            summary: Arc::new(SummaryView::from(&s)),
                        });
                    }
                    Err(e) => {
                        tracing::error!(journal = %j.display(), error = %e, "recovery failed");
                        events.emit(RecordingEvent::Failed {
                            room: String::new(),
                            recording_id: j
                                .file_stem()
                                .map(|s| s.to_string_lossy().to_string())
                                .unwrap_or_default(),
                            error: e.to_string(),
                        });
                    }
                }
            }
        })
        .await;
    }

    /// Start recording `room` for call `call_id`; returns the recording's id and start time.
    pub fn start(&self, room: &str, call_id: &str) -> Result<(String, SystemTime), String> {
        let mut active = lock(&self.inner.active);
        if let Some(a) = active.get(room) {
            return Err(format!("already recording ({})", a.recording_id));
        }
        let sfu = &self.inner.sfu;
        let mut tap = sfu.add_tap(room, "recorder").map_err(|e| e.to_string())?;
        let system = sfu.add_system_source(room).ok();
        let recording_id = uuid::Uuid::new_v4().to_string();
        let started_at = SystemTime::now();
        let meta = RecordingMeta {
            call_id: call_id.to_string(),
            recording_id: recording_id.clone(),
            room: room.to_string(),
            started_at,
        };
        let (cmd_tx, cmd_rx) = std_mpsc::channel::<Cmd>();
        let (stop_tx, mut stop_rx) = oneshot::channel::<&'static str>();
        let events = self.inner.events.clone();
        let cfg = self.inner.cfg.clone();
        let room_s = room.to_string();

        // The encoder thread.
        let thread_events = events.clone();
        let thread_room = room_s.clone();
        let thread_sfu = sfu.clone();
        let thread_id = recording_id.clone();
        let encoder = std::thread::Builder::new()
            .name(format!("rec-{}", &recording_id[..8]))
            .spawn(move || {
                let result = run_encoder(&cfg, meta, cmd_rx, &thread_events, &thread_room);
                match result {
                    Ok(summary) => {
                        tracing::info!(
                            recording = %summary.meta.recording_id,
                            duration_ms = summary.duration.as_millis() as u64,
                            "recording ready"
                        );
                        thread_events.emit(RecordingEvent::Ready {
                            room: thread_room.clone(),
                            summary: Arc::new(SummaryView::from(&summary)),
                        });
                    }
                    Err(e) => {
                        tracing::error!(recording = %thread_id, error = %e, "recording failed");
                        thread_events.emit(RecordingEvent::Failed {
                            room: thread_room.clone(),
                            recording_id: thread_id.clone(),
                            error: e,
                        });
                        let m = ServerMessage::RecordingStopped {
                            recording_id: thread_id.clone(),
                            reason: "failed".to_string(),
                        };
                        thread_sfu.broadcast(
                            &thread_room,
                            ParticipantEvent::Message(Arc::from(m.to_json())),
                        );
                    }
                }
            })
            .map_err(|e| format!("cannot start the recording thread: {e}"))?;

        // Feed it: participants first, then their packets.
        let sfu2 = sfu.clone();
        let beep = self.inner.beep_frames.clone();
        let announcement = self.inner.announcement_frames.clone();
        let interval = self.inner.cfg.beep.interval;
        let consent_room = room_s.clone();
        let (listening_tx, mut listening_rx) = mpsc::unbounded_channel::<String>();
        let stop_id = recording_id.clone();
        let done = tokio::spawn(async move {
            let consent = tokio::spawn(async move {
                let Some(system) = system.map(Arc::new) else {
                    return;
                };
                // Everyone hears the announcement once: those already listening now (a
                // recording switched on mid-call), and each participant whose subscribe
                // connection comes up later, privately. Beeps go to the whole room.
                if system.listening() && !announcement.is_empty() {
                    let (s, a) = (system.clone(), announcement.clone());
                    tokio::spawn(async move { s.play(a).await });
                }
                let mut next = tokio::time::Instant::from_std(
                    std::time::Instant::now() + interval
                        - SystemTime::now()
                            .duration_since(started_at)
                            .unwrap_or_default()
                            .min(interval),
                );
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => {
                            next += interval;
                            let (s, b) = (system.clone(), beep.clone());
                            tokio::spawn(async move { s.play(b).await });
                        }
                        p = listening_rx.recv() => match p {
                            Some(participant) if !announcement.is_empty() => {
                                let (s, a) = (system.clone(), announcement.clone());
                                tokio::spawn(async move { s.play_to(a, &participant).await });
                            }
                            Some(_) => {}
                            None => break,
                        },
                    }
                }
            });
            let mut known: HashMap<String, ()> = HashMap::new();
            let reason = loop {
                tokio::select! {
                    r = &mut stop_rx => break r.unwrap_or("stopped"),
                    p = tap.rx.recv() => {
                        let Some(p) = p else { break "room_closed" };
                        let pid = p.participant.to_string();
                        if !known.contains_key(&pid) {
                            let meta = sfu2
                                .participants(&consent_room)
                                .and_then(|ps| ps.into_iter().find(|m| m.id.as_ref() == pid));
                            let (role, name) = meta
                                .map(|m| (m.role, m.display_name))
                                .unwrap_or_else(|| ("customer".into(), String::new()));
                            let _ = cmd_tx.send(Cmd::Participant {
                                id: pid.clone(),
                                role,
                                name,
                                at: p.arrival,
                            });
                            known.insert(pid.clone(), ());
                        }
                        if cmd_tx
                            .send(Cmd::Packet(RecorderPacket {
                                participant_id: pid,
                                sequence: p.sequence,
                                timestamp: p.timestamp,
                                arrival: p.arrival,
                                payload: p.payload,
                            }))
                            .is_err()
                        {
                            break "failed";
                        }
                    }
                }
            };
            consent.abort();
            sfu2.remove_tap(&consent_room, tap.id);
            tracing::info!(room = %consent_room, reason, "recording stopping");
            let m = ServerMessage::RecordingStopped {
                recording_id: stop_id.clone(),
                reason: reason.to_string(),
            };
            sfu2.broadcast(
                &consent_room,
                ParticipantEvent::Message(Arc::from(m.to_json())),
            );
            let _ = cmd_tx.send(Cmd::Stop(SystemTime::now()));
            drop(cmd_tx);
            let _ = tokio::task::spawn_blocking(move || encoder.join()).await;
        });
        active.insert(
            room_s.clone(),
            Active {
                recording_id: recording_id.clone(),
                stop: stop_tx,
                done,
                listening: listening_tx,
            },
        );
        drop(active);
        tracing::info!(room = %room_s, recording = %recording_id, "recording started");
        events.observe(RecordingEvent::Started {
            room: room_s.clone(),
            call_id: call_id.to_string(),
            recording_id: recording_id.clone(),
            at: started_at,
        });
        let m = ServerMessage::RecordingStarted {
            recording_id: recording_id.clone(),
        };
        sfu.broadcast(&room_s, ParticipantEvent::Message(Arc::from(m.to_json())));
        Ok((recording_id, started_at))
    }

    /// Ask a room's recording to stop. Returns its id and a handle that completes when its
    /// files are final (its `Ready` or `Failed` has been reported by then); the caller decides
    /// how long to wait, so a slow finalisation never holds anyone else up.
    pub fn stop(
        &self,
        room: &str,
        reason: &'static str,
    ) -> Option<(String, tokio::task::JoinHandle<()>)> {
        let a = lock(&self.inner.active).remove(room)?;
        let _ = a.stop.send(reason);
        Some((a.recording_id, a.done))
    }
}

/// The encoder thread's loop: journal and render as packets come, finish on Stop.
fn run_encoder(
    cfg: &RecordingConfig,
    meta: RecordingMeta,
    rx: std_mpsc::Receiver<Cmd>,
    events: &Emitter,
    room: &str,
) -> Result<Summary, String> {
    let recording_id = meta.recording_id.clone();
    // How far the timeline may be rendered: the newest packet's arrival while commands are
    // queued (the thread may be behind, e.g. on a slow disk, and a Stop may be waiting in the
    // queue), the wall clock only once the queue is empty. Rendering to `now` while behind
    // would stretch the recording past the end of the call. Creating the files may itself
    // take long on a slow disk, so it starts at the recording's start, not at `now`.
    let mut horizon = meta.started_at;
    let mut rec = Recording::start(cfg, meta).map_err(|e| e.to_string())?;
    let report = |evs: Vec<ConsentEvent>| {
        for e in evs {
            let kind = e.kind.as_str().to_string();
            events.emit(RecordingEvent::Consent {
                room: room.to_string(),
                recording_id: recording_id.clone(),
                kind,
                offset_ms: e.offset.as_millis() as u64,
            });
        }
    };
    let tick = Duration::from_millis(200);
    let mut last_advance = std::time::Instant::now();
    loop {
        match rx.recv_timeout(tick) {
            Ok(Cmd::Participant { id, role, name, at }) => {
                horizon = horizon.max(at);
                rec.add_participant(&id, &role, &name, at)
                    .map_err(|e| e.to_string())?;
            }
            Ok(Cmd::Packet(p)) => {
                horizon = horizon.max(p.arrival);
                rec.push(p).map_err(|e| e.to_string())?
            }
            Ok(Cmd::Stop(at)) => {
                let s = rec.finish(at).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => horizon = SystemTime::now(),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                let s = rec.finish(horizon).map_err(|e| e.to_string())?;
                return Ok(s);
            }
        }
        if last_advance.elapsed() >= tick {
            last_advance = std::time::Instant::now();
            let evs = rec.advance(horizon).map_err(|e| e.to_string())?;
            report(evs);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A recording thread that is behind (its files were slow to create, or the disk is slow)
    /// finds the whole call, and its stop, already queued: the recording must end where the
    /// call ended, not where the wall clock is when the thread catches up.
    #[test]
    fn a_thread_that_is_behind_does_not_record_past_the_stop() {
        let root =
            std::env::temp_dir().join(format!("commhub-rec-behind-{}", rand::random::<u32>()));
        let cfg = RecordingConfig {
            storage_root: root.clone(),
            announcement: None,
            ..Default::default()
        };
        // The call started 120 s ago and lasted 60 s; the thread only starts now.
        let started_at = SystemTime::now() - Duration::from_secs(120);
        let meta = RecordingMeta {
            call_id: uuid::Uuid::new_v4().to_string(),
            recording_id: uuid::Uuid::new_v4().to_string(),
            room: "behind".into(),
            started_at,
        };
        let (tx, rx) = std_mpsc::channel();
        tx.send(Cmd::Participant {
            id: "p1".into(),
            role: "agent".into(),
            name: "A".into(),
            at: started_at,
        })
        .unwrap();
        let frame = recorder::encode_opus_frames(&vec![1000i16; 960 * 3000]).unwrap();
        for (i, f) in frame.into_iter().enumerate() {
            tx.send(Cmd::Packet(RecorderPacket {
                participant_id: "p1".into(),
                sequence: i as u16,
                timestamp: (i * 960) as u32,
                arrival: started_at + Duration::from_millis(20 * i as u64),
                payload: Bytes::from(f),
            }))
            .unwrap();
        }
        tx.send(Cmd::Stop(started_at + Duration::from_secs(60)))
            .unwrap();
        let s = run_encoder(&cfg, meta, rx, &Emitter::default(), "behind").unwrap();
        let secs = s.duration.as_secs_f64();
        let _ = std::fs::remove_dir_all(&root);
        assert!(
            (59.0..=61.0).contains(&secs),
            "the recording lasts the call's 60 s, not until the thread caught up: {secs:.1} s"
        );
    }
}
