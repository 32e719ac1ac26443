//! Recording wiring: connects a room's tap to a `recorder::Recording`, plays the consent
//! announcement and periodic beeps into the room through the SFU's system source, and reports
//! recording events (started / consent / ready / failed) to whoever listens (the store, logs,
//! and the participants of the room).
//!
//! Threading: each recording runs its encoder on its own OS thread (CPU-heavy, and the encoders
//! are not async); an async forwarder feeds it packets from the tap and participant details from
//! the SFU. The forwarder never blocks the room: the tap drops (and counts) what does not fit.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use media::{ParticipantEvent, RoomEvent, Sfu};
use recorder::{ConsentEvent, RecorderPacket, Recording, RecordingConfig, RecordingMeta, Summary};
use serde::Serialize;
use signaling::ServerMessage;
use tokio::sync::{broadcast, oneshot};

/// What happened to a recording.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RecordingEvent {
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
}

/// Starts, stops and finalises recordings of rooms.
#[derive(Clone)]
pub struct Recorders {
    inner: Arc<Inner>,
}

struct Inner {
    sfu: Sfu,
    cfg: RecordingConfig,
    default_on: bool,
    active: Mutex<HashMap<String, Active>>,
    /// Per-room choice made before or at creation (join's `record`), or mid-call.
    wanted: Mutex<HashMap<String, bool>>,
    events: broadcast::Sender<RecordingEvent>,
    beep_frames: Arc<Vec<Bytes>>,
    announcement_frames: Arc<Vec<Bytes>>,
    /// Maps a room to the id of its call (the store's calls); the room name without one.
    call_of: Mutex<Option<CallResolver>>,
}

/// Finds (or makes) the call a room belongs to.
pub type CallResolver = Arc<dyn Fn(&str) -> String + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorders {
    pub fn new(sfu: Sfu, cfg: RecordingConfig, default_on: bool) -> Self {
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
                default_on,
                active: Mutex::new(HashMap::new()),
                wanted: Mutex::new(HashMap::new()),
                events: broadcast::channel(4096).0,
                beep_frames,
                announcement_frames,
                call_of: Mutex::new(None),
            }),
        }
    }

    /// Recordings name their call through `f` from now on.
    pub fn set_call_resolver(&self, f: CallResolver) {
        *lock(&self.inner.call_of) = Some(f);
    }

    pub fn events(&self) -> broadcast::Receiver<RecordingEvent> {
        self.inner.events.subscribe()
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

    /// Choose whether a room that is not open yet will be recorded when it opens.
    pub fn prefer(&self, room: &str, record: bool) {
        if self.inner.sfu.participants(room).is_none() {
            lock(&self.inner.wanted).insert(room.to_string(), record);
        }
    }

    /// Start or stop recording an open room now.
    pub async fn set(&self, room: &str, enabled: bool) -> Result<(), String> {
        lock(&self.inner.wanted).insert(room.to_string(), enabled);
        if enabled {
            if self.active(room).is_none() {
                self.start(room)?;
            }
            Ok(())
        } else {
            self.stop(room, "requested").await;
            Ok(())
        }
    }

    /// Follow rooms opening and closing; finalise every recording on shutdown. Also recovers
    /// recordings a crash left behind.
    pub fn spawn(
        &self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut rooms = self.inner.sfu.room_events();
        tokio::spawn(async move {
            me.recover_pending().await;
            loop {
                tokio::select! {
                    ev = rooms.recv() => match ev {
                        Ok(RoomEvent::Opened(room)) => {
                            let want = lock(&me.inner.wanted).get(&room).copied().unwrap_or(me.inner.default_on);
                            if want && let Err(e) = me.start(&room) {
                                tracing::warn!(room = %room, error = %e, "recording did not start");
                            }
                        }
                        Ok(RoomEvent::Closed(room)) => {
                            me.stop(&room, "room_closed").await;
                            lock(&me.inner.wanted).remove(&room);
                        }
                        Ok(RoomEvent::Listening { .. } | RoomEvent::Left { .. }) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "recorder missed room events");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    r = shutdown.changed() => {
                        if r.is_err() || *shutdown.borrow() {
                            break;
                        }
                    }
                }
            }
            me.stop_all("shutdown").await;
        })
    }

    /// Finalise every running recording (shutdown).
    pub async fn stop_all(&self, reason: &'static str) {
        let rooms: Vec<String> = lock(&self.inner.active).keys().cloned().collect();
        for r in rooms {
            self.stop(&r, reason).await;
        }
    }

    async fn recover_pending(&self) {
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
                        let _ = events.send(RecordingEvent::Ready {
                            room: s.meta.room.clone(),
                            summary: Arc::new(SummaryView::from(&s)),
                        });
                    }
                    Err(e) => {
                        tracing::error!(journal = %j.display(), error = %e, "recovery failed");
                        let _ = events.send(RecordingEvent::Failed {
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

    fn start(&self, room: &str) -> Result<(), String> {
        let mut active = lock(&self.inner.active);
        if active.contains_key(room) {
            return Ok(());
        }
        let sfu = &self.inner.sfu;
        let mut tap = sfu.add_tap(room, "recorder").map_err(|e| e.to_string())?;
        let system = sfu.add_system_source(room).ok();
        let recording_id = uuid::Uuid::new_v4().to_string();
        let started_at = SystemTime::now();
        let resolver = lock(&self.inner.call_of).clone();
        let call_id = resolver
            .map(|f| f(room))
            .unwrap_or_else(|| room.to_string());
        let meta = RecordingMeta {
            call_id: call_id.clone(),
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
                        let _ = thread_events.send(RecordingEvent::Ready {
                            room: thread_room.clone(),
                            summary: Arc::new(SummaryView::from(&summary)),
                        });
                    }
                    Err(e) => {
                        tracing::error!(recording = %thread_id, error = %e, "recording failed");
                        let _ = thread_events.send(RecordingEvent::Failed {
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
        let consent_room2 = room_s.clone();
        let mut room_events = sfu.room_events();
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
                        ev = room_events.recv() => match ev {
                            Ok(RoomEvent::Listening { room, participant })
                                if room == consent_room2 && !announcement.is_empty() =>
                            {
                                let (s, a) = (system.clone(), announcement.clone());
                                tokio::spawn(async move { s.play_to(a, &participant).await });
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                            _ => {}
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
            },
        );
        drop(active);
        tracing::info!(room = %room_s, recording = %recording_id, "recording started");
        let _ = events.send(RecordingEvent::Started {
            room: room_s.clone(),
            call_id,
            recording_id: recording_id.clone(),
            at: started_at,
        });
        let m = ServerMessage::RecordingStarted { recording_id };
        sfu.broadcast(&room_s, ParticipantEvent::Message(Arc::from(m.to_json())));
        Ok(())
    }

    /// Stop a room's recording and wait until its files are final.
    pub async fn stop(&self, room: &str, reason: &'static str) {
        let Some(a) = lock(&self.inner.active).remove(room) else {
            return;
        };
        let _ = a.stop.send(reason);
        if tokio::time::timeout(Duration::from_secs(30), a.done)
            .await
            .is_err()
        {
            tracing::error!(room = %room, "recording did not finalise within 30 s");
        }
    }
}

/// The encoder thread's loop: journal and render as packets come, finish on Stop.
fn run_encoder(
    cfg: &RecordingConfig,
    meta: RecordingMeta,
    rx: std_mpsc::Receiver<Cmd>,
    events: &broadcast::Sender<RecordingEvent>,
    room: &str,
) -> Result<Summary, String> {
    let recording_id = meta.recording_id.clone();
    let mut rec = Recording::start(cfg, meta).map_err(|e| e.to_string())?;
    let report = |evs: Vec<ConsentEvent>| {
        for e in evs {
            let kind = e.kind.as_str().to_string();
            let _ = events.send(RecordingEvent::Consent {
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
                rec.add_participant(&id, &role, &name, at)
                    .map_err(|e| e.to_string())?;
            }
            Ok(Cmd::Packet(p)) => rec.push(p).map_err(|e| e.to_string())?,
            Ok(Cmd::Stop(at)) => {
                let s = rec.finish(at).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                let s = rec.finish(SystemTime::now()).map_err(|e| e.to_string())?;
                return Ok(s);
            }
        }
        if last_advance.elapsed() >= tick {
            last_advance = std::time::Instant::now();
            let evs = rec.advance(SystemTime::now()).map_err(|e| e.to_string())?;
            report(evs);
        }
    }
}
