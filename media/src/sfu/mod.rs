//! The SFU with its IO: rooms of participants, each participant's publish and subscribe peer
//! connections, the publisher read loops that fan packets out, and the subscriber writer tasks
//! that rewrite and send them.
//!
//! Ownership: a [`Participant`] handle is owned by whoever drives it (a WebSocket session, a
//! WHIP supervisor task). Room membership lives in [`RoomModel`](crate::RoomModel) behind a mutex that is never held
//! across an `.await`; the forwarding path reads an immutable [`Routes`](crate::Routes) snapshot (`ArcSwap`) and
//! takes no lock. Dropping a `Participant` removes it from its room.
//!
//! ## Files
//! - `mod.rs` (this file): [`Sfu`], its configuration, errors and events; joining, taps,
//!   shutdown and the lookups `src` uses.
//! - `rooms.rs`: a room's shared state (membership, routes, levels), opening and closing rooms,
//!   and the audio-level ticker.
//! - `participant.rs`: [`Participant`]: publish and subscribe negotiation, candidates, leaving.
//! - `negotiate.rs`: SDP helpers shared by every kind of connection (answer with a track,
//!   wait for a complete SDP, the negotiated payload type).
//! - `io.rs`: the media hot path: the per-connection watcher, publisher read loops and
//!   subscriber writer tasks.
//! - `whip.rs`: WHIP publishers and WHEP subscribers.
//! - `system.rs`: [`SystemSource`], the server's own audio (consent announcement, beeps).
//! - `leg.rs`: [`LegPort`], a phone leg's place in a room; `webrtc_leg.rs`: [`WebRtcMedia`],
//!   ICE + DTLS-SRTP media for a SIP leg.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use webrtc::peer_connection::RTCIceCandidateInit;

use crate::engine::{CountersSnapshot, EngineConfig, Worker};
use crate::peer::{OPUS_PT, PeerConfig, PeerError, PeerFactory};
use crate::room::{
    LeaveReason, Notice, ParticipantId, ParticipantKind, ParticipantMeta, RoomError,
};
use crate::stats::MediaStats;
use crate::tap::{TapReceiver, tap};

mod io;
mod leg;
mod negotiate;
mod participant;
mod rooms;
mod system;
mod webrtc_leg;
mod whip;

pub use leg::LegPort;
pub use participant::Participant;
use rooms::Room;
pub use system::SystemSource;
pub use webrtc_leg::WebRtcMedia;

/// SFU settings (translated from the server's config by `src`).
#[derive(Debug, Clone)]
pub struct SfuConfig {
    pub peer: PeerConfig,
    pub max_participants_per_room: usize,
    pub subscriber_queue: usize,
    pub tap_queue: usize,
    pub audio_level_interval: Duration,
    /// A connection that is not connected (or stays disconnected) this long is given up.
    pub media_timeout: Duration,
    /// Upper bound on any one SDP operation or ICE gathering.
    pub negotiation_timeout: Duration,
    /// Run signaling and WHIP participants on the shared-socket media engine
    /// ([`crate::engine`]); `None`: a webrtc-rs connection with its own port each. WHEP viewers
    /// and SIP WebRTC legs use webrtc-rs connections either way.
    pub shared: Option<SharedConfig>,
}

/// The shared-socket media engine's workers.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// UDP port of worker 0 (on `peer.bind_ip`); worker `i` binds `port + i`. 0: any free port
    /// for each.
    pub port: u16,
    /// Worker threads, each with its socket; a room lives on one, chosen by its name.
    pub workers: usize,
}

/// Which of a participant's connections an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Publish,
    Subscribe,
}

/// What a participant's owner is told.
#[derive(Debug, Clone)]
pub enum ParticipantEvent {
    Notice(Notice),
    LocalCandidate {
        target: Target,
        candidate: Option<RTCIceCandidateInit>,
    },
    AudioLevels {
        levels: Vec<(ParticipantId, f32)>,
        active_speaker: Option<ParticipantId>,
    },
    ActiveSpeaker(Option<ParticipantId>),
    /// A connection failed or did not (re)connect within the media timeout.
    MediaTimeout(Target),
    /// The server removes the participant (shutdown, kick).
    Removed(LeaveReason),
    /// A message from another part of the server to relay as is (already serialised), e.g.
    /// recording started/stopped.
    Message(Arc<str>),
}

/// Errors of SFU operations; each maps to one client-facing error.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Room(#[from] RoomError),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Peer(#[from] PeerError),
    #[error("{0}")]
    State(&'static str),
}

/// A remote participant's audio on a subscribe connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribedTrack {
    pub participant_id: ParticipantId,
    pub stream_id: String,
    pub track_id: String,
}

/// Rooms and everything in them. Cheap to clone.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<SfuInner>,
}

struct SfuInner {
    cfg: SfuConfig,
    factory: PeerFactory,
    /// The media engine's workers (empty without [`SfuConfig::shared`]).
    engines: Vec<Worker>,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    stats: Arc<MediaStats>,
    closing: AtomicBool,
    next_id: AtomicU64,
    /// Participant handles and WHEP sessions not yet fully closed (peer connections included).
    live: AtomicU64,
    /// WHIP publishers and WHEP subscribers, by resource id: a sender that ends them.
    resources: Mutex<HashMap<String, oneshot::Sender<LeaveReason>>>,
    /// Where room events go (one consumer, set once by the server's wiring).
    events: Emitter,
    /// Woken when `live` drops to zero (shutdown waits on it).
    idle: tokio::sync::Notify,
}

/// The consumer of [`RoomEvent`]s: called synchronously, in order, from the place the event
/// happens (under the room's lock for joins and leaves, so a room's events never overtake each
/// other). It must not block: the server's sink only queues the event.
pub type RoomEventSink = Arc<dyn Fn(RoomEvent) + Send + Sync>;

#[derive(Clone, Default)]
struct Emitter(Arc<std::sync::OnceLock<RoomEventSink>>);

impl Emitter {
    fn emit(&self, ev: RoomEvent) {
        if let Some(f) = self.0.get() {
            f(ev);
        }
    }
}

/// Rooms opening and closing, for consumers such as the recorder wiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    Opened(String),
    Closed(String),
    /// A participant's (or WHEP viewer's) subscribe connection came up: from now on it hears
    /// what the room forwards.
    Listening {
        room: String,
        participant: String,
    },
    /// A participant (not the server's own system source) left the room. Sent before the
    /// room's `Closed` when it was the last.
    Left {
        room: String,
        participant: String,
        reason: LeaveReason,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic while holding it, which is a bug; keep serving with the
    // data as it is rather than cascading the panic into every other room.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SfuInner {
    fn release_live(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Sfu {
    /// Start the SFU (and the media engine's workers, binding their sockets).
    pub fn new(cfg: SfuConfig) -> std::io::Result<Self> {
        let stats = Arc::new(MediaStats::default());
        let factory = PeerFactory::new(cfg.peer.clone(), stats.clone());
        let mut engines = Vec::new();
        if let Some(sh) = &cfg.shared {
            let announce_ip = cfg
                .peer
                .announced_ips
                .first()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
            for i in 0..sh.workers.max(1) {
                let port = if sh.port == 0 {
                    0
                } else {
                    sh.port.checked_add(i as u16).ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "media.shared_port + workers exceeds 65535",
                        )
                    })?
                };
                let bind = std::net::SocketAddr::new(cfg.peer.bind_ip, port);
                let w = Worker::spawn(EngineConfig {
                    bind,
                    announce_ip,
                    ice_disconnected: cfg.peer.ice_disconnected,
                    ice_failed: cfg.peer.ice_failed,
                    stats: Some(stats.clone()),
                })
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("media engine on {bind}: {e}"))
                })?;
                tracing::info!(
                    worker = i,
                    port = w.local_addr().port(),
                    "media engine worker started"
                );
                engines.push(w);
            }
        }
        Ok(Sfu {
            inner: Arc::new(SfuInner {
                cfg,
                factory,
                engines,
                rooms: Mutex::new(HashMap::new()),
                stats,
                closing: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                live: AtomicU64::new(0),
                resources: Mutex::new(HashMap::new()),
                events: Emitter::default(),
                idle: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The media engine worker a room lives on (`None` without the engine).
    fn engine_for(&self, room: &str) -> Option<&Worker> {
        let n = self.inner.engines.len();
        if n == 0 {
            return None;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        room.hash(&mut h);
        self.inner.engines.get((h.finish() % n as u64) as usize)
    }

    /// The media engine workers' UDP ports (empty without the engine).
    pub fn engine_ports(&self) -> Vec<u16> {
        self.inner
            .engines
            .iter()
            .map(|w| w.local_addr().port())
            .collect()
    }

    /// The media engine workers' counters, summed.
    pub fn engine_counters(&self) -> CountersSnapshot {
        let mut t = CountersSnapshot::default();
        for w in &self.inner.engines {
            let c = w.counters().snapshot();
            t.datagrams_in += c.datagrams_in;
            t.datagrams_out += c.datagrams_out;
            t.forwarded += c.forwarded;
            t.junk += c.junk;
            t.bad_stun += c.bad_stun;
            t.unknown_source += c.unknown_source;
            t.stun_unknown_ufrag += c.stun_unknown_ufrag;
            t.srtp_failures += c.srtp_failures;
            t.rtcp_in += c.rtcp_in;
            t.injected += c.injected;
            t.send_errors += c.send_errors;
        }
        t
    }

    pub fn stats(&self) -> &Arc<MediaStats> {
        &self.inner.stats
    }

    pub fn config(&self) -> &SfuConfig {
        &self.inner.cfg
    }

    /// UDP ports leased / available.
    pub fn ports(&self) -> (usize, usize) {
        let p = self.inner.factory.ports();
        (p.leased(), p.capacity())
    }

    /// Names of open rooms with their participant counts (the server's own system sources are
    /// not counted).
    pub fn rooms(&self) -> Vec<(String, usize)> {
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).values().cloned().collect();
        let mut v: Vec<_> = rooms
            .iter()
            .map(|r| {
                let n = lock(&r.state)
                    .model
                    .participants()
                    .iter()
                    .filter(|m| m.kind != ParticipantKind::System)
                    .count();
                (r.name.to_string(), n)
            })
            .collect();
        v.sort();
        v
    }

    /// Everyone in a room, in order of arrival.
    pub fn participants(&self, room: &str) -> Option<Vec<ParticipantMeta>> {
        let r = lock(&self.inner.rooms).get(room).cloned()?;
        let st = lock(&r.state);
        Some(st.model.participants())
    }

    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Relaxed)
    }

    /// Join `room` (created on first join).
    pub fn join(
        &self,
        room: &str,
        display_name: String,
        role: String,
        kind: ParticipantKind,
    ) -> Result<(Participant, Vec<ParticipantMeta>), SfuError> {
        if self.is_closing() {
            return Err(SfuError::ShuttingDown);
        }
        let id: ParticipantId = Arc::from(new_id().as_str());
        let subscribes = kind == ParticipantKind::Signaling;
        let (tx, rx) = mpsc::unbounded_channel();
        loop {
            let r = self.room(room);
            let mut st = lock(&r.state);
            if st.closed {
                // Closed between lookup and lock: a fresh room will be made.
                drop(st);
                self.drop_room_if_closed(&r);
                continue;
            }
            let (meta, notices) = st.model.join(
                id.clone(),
                display_name.clone(),
                role.clone(),
                kind,
                subscribes,
            )?;
            let others: Vec<ParticipantMeta> = st
                .model
                .participants()
                .into_iter()
                .filter(|m| m.id != id)
                .collect();
            st.members.insert(id.clone(), tx.clone());
            r.dispatch(&st, notices);
            drop(st);
            MediaStats::gauge(&self.inner.stats.participants, 1);
            self.inner.live.fetch_add(1, Ordering::Relaxed);
            tracing::info!(room = %room, participant = %id, kind = kind.as_str(), "joined");
            let p = Participant {
                id: id.clone(),
                meta,
                room: r,
                sfu: self.clone(),
                events: rx,
                events_tx: tx,
                publish: None,
                level_ext: Arc::new(AtomicU8::new(0)),
                subscribe: None,
                engine_publish: None,
                engine_subscribe: None,
                left: false,
            };
            return Ok((p, others));
        }
    }

    /// Send every room event from now on to `sink` (lossless: it is called for each event, in
    /// order). Only the first sink set is used; returns false if one was set already.
    pub fn set_event_sink(&self, sink: RoomEventSink) -> bool {
        self.inner.events.0.set(sink).is_ok()
    }

    /// Send an event to every participant of a room (e.g. recording started).
    pub fn broadcast(&self, room: &str, ev: ParticipantEvent) {
        if let Some(r) = lock(&self.inner.rooms).get(room).cloned() {
            let st = lock(&r.state);
            for tx in st.members.values() {
                let _ = tx.send(ev.clone());
            }
        }
    }
    /// Tap a room's packets (the room must be open). The tap lives until its receiver is dropped
    /// or [`Sfu::remove_tap`] is called.
    pub fn add_tap(&self, room: &str, name: &str) -> Result<TapReceiver, SfuError> {
        let r = lock(&self.inner.rooms)
            .get(room)
            .cloned()
            .ok_or_else(|| SfuError::NotFound(format!("no room `{room}`")))?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (t, rx) = tap(id, name, self.inner.cfg.tap_queue);
        let mut st = lock(&r.state);
        st.taps.retain(|t| !t.is_closed());
        st.taps.push(t);
        r.publish_routes(&st);
        Ok(rx)
    }

    pub fn remove_tap(&self, room: &str, tap_id: u64) {
        if let Some(r) = lock(&self.inner.rooms).get(room).cloned() {
            let mut st = lock(&r.state);
            st.taps.retain(|t| t.id != tap_id);
            r.publish_routes(&st);
        }
    }

    /// End a WHIP publisher or WHEP subscriber by its resource id. False when unknown.
    pub fn end_resource(&self, id: &str) -> bool {
        match lock(&self.inner.resources).remove(id) {
            Some(tx) => {
                let _ = tx.send(LeaveReason::Left);
                true
            }
            None => false,
        }
    }

    /// Begin shutdown: refuse new joins and tell every participant's owner to leave.
    pub fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::Relaxed);
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).values().cloned().collect();
        for r in rooms {
            let st = lock(&r.state);
            for tx in st.members.values() {
                let _ = tx.send(ParticipantEvent::Removed(LeaveReason::ServerShutdown));
            }
        }
        let resources: Vec<_> = lock(&self.inner.resources).drain().collect();
        for (_, tx) in resources {
            let _ = tx.send(LeaveReason::ServerShutdown);
        }
    }

    /// Remove every participant of a room (e.g. the call ended). Returns how many were told.
    pub fn end_room(&self, room: &str, reason: LeaveReason) -> usize {
        let Some(r) = lock(&self.inner.rooms).get(room).cloned() else {
            return 0;
        };
        let st = lock(&r.state);
        st.members
            .values()
            .filter(|tx| tx.send(ParticipantEvent::Removed(reason)).is_ok())
            .count()
    }

    /// Remove a participant by id (e.g. the call ended). False when not found.
    pub fn kick(&self, room: &str, participant: &str) -> bool {
        let Some(r) = lock(&self.inner.rooms).get(room).cloned() else {
            return false;
        };
        let st = lock(&r.state);
        match st.members.get(participant) {
            Some(tx) => tx
                .send(ParticipantEvent::Removed(LeaveReason::Kicked))
                .is_ok(),
            None => false,
        }
    }

    /// Participants and WHEP sessions whose connections are not yet closed; shutdown waits for
    /// this to reach zero.
    pub fn live_sessions(&self) -> u64 {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Wait until no participant or WHEP session is live (see [`Sfu::live_sessions`]).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live_sessions() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Participants across all rooms.
    pub fn participant_count(&self) -> usize {
        self.rooms().iter().map(|(_, n)| n).sum()
    }
}

fn new_id() -> String {
    let a: u64 = rand::random();
    let b: u64 = rand::random();
    // A random (version 4) UUID.
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_uuids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert_ne!(new_id(), id);
    }
}
