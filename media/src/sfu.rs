//! The SFU with its IO: rooms of participants, each participant's publish and subscribe peer
//! connections, the publisher read loops that fan packets out, and the subscriber writer tasks
//! that rewrite and send them.
//!
//! Ownership: a [`Participant`] handle is owned by whoever drives it (a WebSocket session, a
//! WHIP supervisor task). Room membership lives in [`RoomModel`] behind a mutex that is never held
//! across an `.await`; the forwarding path reads an immutable [`Routes`] snapshot (`ArcSwap`) and
//! takes no lock. Dropping a `Participant` removes it from its room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{mpsc, oneshot};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{RTCIceCandidateInit, RTCPeerConnectionState, RTCSessionDescription};
use webrtc::rtp_transceiver::RtpSender;

use crate::forward::{ConsumerSet, MediaPacket, Routes, SinkMsg, SubscriberSink, fan_out};
use crate::level::{AUDIO_LEVEL_URI, SpeakerDetector, parse_audio_level};
use crate::peer::{
    OPUS_CLOCK_RATE, OPUS_PT, Peer, PeerConfig, PeerError, PeerEvent, PeerFactory, extmap_id,
    offers_opus, opus_codec,
};
use crate::room::{
    LeaveReason, Notice, Notices, ParticipantId, ParticipantKind, ParticipantMeta, RoomError,
    RoomModel,
};
use crate::stats::MediaStats;
use crate::tap::{Tap, TapReceiver, tap};

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

struct Room {
    name: Arc<str>,
    /// Subscribe connections that are up (they hear what is forwarded now).
    listeners: Arc<std::sync::atomic::AtomicUsize>,
    state: Mutex<RoomState>,
    routes: ArcSwap<Routes>,
    levels: Mutex<SpeakerDetector<ParticipantId>>,
}

struct RoomState {
    model: RoomModel,
    members: HashMap<ParticipantId, mpsc::UnboundedSender<ParticipantEvent>>,
    sinks: Vec<SubscriberSink>,
    taps: Vec<Tap>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic while holding it, which is a bug; keep serving with the
    // data as it is rather than cascading the panic into every other room.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Room {
    fn publish_routes(&self, st: &RoomState) {
        self.routes.store(Arc::new(Routes {
            sinks: st.sinks.clone(),
            taps: st.taps.clone(),
        }));
    }

    fn dispatch(&self, st: &RoomState, notices: Notices) {
        for (to, n) in notices {
            if let Some(tx) = st.members.get(&to) {
                let _ = tx.send(ParticipantEvent::Notice(n));
            }
        }
    }
}

impl SfuInner {
    fn release_live(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Sfu {
    pub fn new(cfg: SfuConfig) -> Self {
        let stats = Arc::new(MediaStats::default());
        let factory = PeerFactory::new(cfg.peer.clone(), stats.clone());
        Sfu {
            inner: Arc::new(SfuInner {
                cfg,
                factory,
                rooms: Mutex::new(HashMap::new()),
                stats,
                closing: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                live: AtomicU64::new(0),
                resources: Mutex::new(HashMap::new()),
                events: Emitter::default(),
                idle: tokio::sync::Notify::new(),
            }),
        }
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

    fn room(&self, name: &str) -> Arc<Room> {
        let mut rooms = lock(&self.inner.rooms);
        if let Some(r) = rooms.get(name) {
            return r.clone();
        }
        let room = Arc::new(Room {
            name: Arc::from(name),
            listeners: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            state: Mutex::new(RoomState {
                model: RoomModel::new(name, self.inner.cfg.max_participants_per_room),
                members: HashMap::new(),
                sinks: Vec::new(),
                taps: Vec::new(),
                closed: false,
            }),
            routes: ArcSwap::from_pointee(Routes::default()),
            levels: Mutex::new(SpeakerDetector::new()),
        });
        rooms.insert(name.to_string(), room.clone());
        MediaStats::gauge(&self.inner.stats.rooms, 1);
        tracing::info!(room = %name, "room opened");
        self.inner.events.emit(RoomEvent::Opened(name.to_string()));
        tokio::spawn(level_ticker(
            Arc::downgrade(&room),
            self.inner.cfg.audio_level_interval,
        ));
        room
    }

    fn drop_room_if_closed(&self, room: &Arc<Room>) {
        let closed = lock(&room.state).closed;
        if !closed {
            return;
        }
        let mut rooms = lock(&self.inner.rooms);
        if rooms
            .get(room.name.as_ref())
            .is_some_and(|r| Arc::ptr_eq(r, room))
        {
            rooms.remove(room.name.as_ref());
            MediaStats::gauge(&self.inner.stats.rooms, -1);
            tracing::info!(room = %room.name, "room closed");
            self.inner
                .events
                .emit(RoomEvent::Closed(room.name.to_string()));
        }
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

    /// Add the server's own audio source to an open room: every subscriber gets a track for
    /// it, and [`SystemSource::play`] sends Opus frames on it (consent beeps, announcements).
    /// It is never tapped and does not keep the room open. Dropping it removes it.
    pub fn add_system_source(&self, room: &str) -> Result<SystemSource, SfuError> {
        let r = lock(&self.inner.rooms)
            .get(room)
            .cloned()
            .ok_or_else(|| SfuError::NotFound(format!("no room `{room}`")))?;
        let id: ParticipantId = Arc::from(new_id().as_str());
        let mut st = lock(&r.state);
        if st.closed {
            return Err(SfuError::NotFound(format!("room `{room}` is closing")));
        }
        let (_, n1) = st.model.join(
            id.clone(),
            "Recording notice".into(),
            "system".into(),
            ParticipantKind::System,
            false,
        )?;
        let n2 = st.model.set_publishing(&id, true)?;
        r.dispatch(&st, n1);
        r.dispatch(&st, n2);
        drop(st);
        Ok(SystemSource {
            id,
            room: r,
            stats: self.inner.stats.clone(),
            clock: Arc::new(Mutex::new(SystemClock {
                ssrc: rand::random(),
                seq: rand::random(),
                started: Instant::now(),
            })),
        })
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

    /// WHIP: join `room` as a publisher from a complete SDP offer; returns the participant id
    /// and the complete answer. The participant stays until [`Sfu::end_resource`] or its media
    /// times out.
    pub async fn whip_publish(
        &self,
        room: &str,
        display_name: String,
        role: String,
        offer: String,
    ) -> Result<(ParticipantId, String), SfuError> {
        let (mut p, _) = self.join(room, display_name, role, ParticipantKind::Whip)?;
        let answer = match p.publish(offer, true).await {
            Ok(a) => a,
            Err(e) => {
                p.leave(LeaveReason::Left).await;
                return Err(e);
            }
        };
        let id = p.id.clone();
        let (stop_tx, mut stop_rx) = oneshot::channel();
        lock(&self.inner.resources).insert(id.to_string(), stop_tx);
        let sfu = self.clone();
        tokio::spawn(async move {
            let reason = loop {
                tokio::select! {
                    r = &mut stop_rx => break r.unwrap_or(LeaveReason::Left),
                    ev = p.events.recv() => match ev {
                        Some(ParticipantEvent::MediaTimeout(_)) => break LeaveReason::MediaTimeout,
                        Some(ParticipantEvent::Removed(r)) => break r,
                        Some(_) => {}
                        None => break LeaveReason::Left,
                    },
                }
            };
            lock(&sfu.inner.resources).remove(p.id.as_ref());
            p.leave(reason).await;
        });
        Ok((id, answer))
    }

    /// WHEP: subscribe to one participant's audio from a complete SDP offer; returns the
    /// subscriber id and the complete answer.
    pub async fn whep_subscribe(
        &self,
        room: &str,
        producer: &str,
        offer: String,
    ) -> Result<(String, String), SfuError> {
        if self.is_closing() {
            return Err(SfuError::ShuttingDown);
        }
        let r = lock(&self.inner.rooms)
            .get(room)
            .cloned()
            .ok_or_else(|| SfuError::NotFound(format!("no room `{room}`")))?;
        let producer_id: ParticipantId = {
            let st = lock(&r.state);
            let m = st.model.get(producer).ok_or_else(|| {
                SfuError::NotFound(format!("no participant `{producer}` in room `{room}`"))
            })?;
            m.id.clone()
        };
        if !offers_opus(&offer) {
            return Err(SfuError::BadSdp(
                "the offer has no Opus audio m-line".into(),
            ));
        }
        let sub_id = new_id();
        let sub_pid: ParticipantId = Arc::from(sub_id.as_str());
        let (ptx, prx) = mpsc::unbounded_channel();
        let peer = self.inner.factory.create(ptx).await?;
        let ssrc = rand::random::<u32>();
        let track = Arc::new(local_track(&producer_id, ssrc));
        let timeout = self.inner.cfg.negotiation_timeout;
        let pt = answer_with_track(&peer, &track, offer, timeout, "WHEP negotiation").await?;
        let answer = match complete_local_sdp(&peer, prx, timeout).await {
            Ok((sdp, rest)) => {
                let connected = Arc::new(AtomicBool::new(false));
                let (sink_tx, sink_rx) = mpsc::channel(self.inner.cfg.subscriber_queue);
                let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
                let _ = ctrl_tx.send(WriterCtrl::Add {
                    producer: producer_id.clone(),
                    track,
                    ssrc,
                    pt,
                });
                tokio::spawn(writer_task(
                    sink_rx,
                    ctrl_rx,
                    connected.clone(),
                    self.inner.stats.clone(),
                ));
                {
                    let mut st = lock(&r.state);
                    st.sinks.push(SubscriberSink {
                        subscriber: sub_pid.clone(),
                        only: Some(producer_id.clone()),
                        tx: sink_tx,
                    });
                    r.publish_routes(&st);
                }
                MediaStats::gauge(&self.inner.stats.subscribers, 1);
                self.inner.live.fetch_add(1, Ordering::Relaxed);
                let (stop_tx, stop_rx) = oneshot::channel();
                lock(&self.inner.resources).insert(sub_id.clone(), stop_tx);
                let (ev_tx, ev_rx) = mpsc::unbounded_channel();
                tokio::spawn(watch_peer(
                    rest,
                    self.inner.factory.clone(),
                    Target::Subscribe,
                    ev_tx,
                    connected,
                    self.inner.cfg.media_timeout,
                    None,
                    Some(ListenerCtx {
                        count: r.listeners.clone(),
                        events: self.inner.events.clone(),
                        room: r.name.clone(),
                        participant: sub_pid.clone(),
                    }),
                ));
                tokio::spawn(whep_supervisor(
                    self.clone(),
                    r.clone(),
                    sub_pid,
                    peer,
                    stop_rx,
                    ev_rx,
                    ctrl_tx,
                ));
                sdp
            }
            Err(e) => {
                peer.close().await;
                return Err(e);
            }
        };
        Ok((sub_id, self.inner.factory.announce_sdp(answer)))
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

fn local_track(producer: &ParticipantId, ssrc: u32) -> TrackLocalStaticRTP {
    TrackLocalStaticRTP::new(MediaStreamTrack::new(
        producer.to_string(),
        format!("audio-{producer}"),
        format!("audio-{producer}"),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec(),
            ..Default::default()
        }],
    ))
}

/// The Opus payload type negotiated on a sender (our offer uses [`OPUS_PT`]; as answerer the
/// remote's choice wins).
async fn negotiated_pt(sender: &Arc<dyn RtpSender>) -> u8 {
    match sender.get_parameters().await {
        Ok(p) => p
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("audio/opus"))
            .map(|c| c.payload_type)
            .unwrap_or(OPUS_PT),
        Err(_) => OPUS_PT,
    }
}

/// Answer `offer` on `peer` with `track` as what it sends (WHEP, and a SIP leg's WebRTC
/// media), bounded by `timeout`; returns the Opus payload type the answer chose. On failure the
/// peer is closed.
async fn answer_with_track(
    peer: &Peer,
    track: &Arc<TrackLocalStaticRTP>,
    offer: String,
    timeout: Duration,
    what: &'static str,
) -> Result<u8, SfuError> {
    let negotiated = async {
        let sender = peer
            .pc
            .add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(PeerError::from)?;
        let desc =
            RTCSessionDescription::offer(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        peer.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let answer = peer.pc.create_answer(None).await.map_err(PeerError::from)?;
        peer.pc
            .set_local_description(answer)
            .await
            .map_err(PeerError::from)?;
        Ok::<_, SfuError>(negotiated_pt(&sender).await)
    };
    match tokio::time::timeout(timeout, negotiated).await {
        Ok(Ok(pt)) => Ok(pt),
        Ok(Err(e)) => {
            peer.close().await;
            Err(e)
        }
        Err(_) => {
            peer.close().await;
            Err(PeerError::Timeout(what).into())
        }
    }
}

/// Wait until ICE gathering completes (bounded), then return the local SDP with every
/// candidate, and the event receiver for further use.
async fn complete_local_sdp(
    peer: &Peer,
    mut rx: mpsc::UnboundedReceiver<PeerEvent>,
    timeout: Duration,
) -> Result<(String, mpsc::UnboundedReceiver<PeerEvent>), SfuError> {
    let mut early = Vec::new();
    let gathered = tokio::time::timeout(timeout, async {
        while let Some(ev) = rx.recv().await {
            match ev {
                PeerEvent::LocalCandidate(None) => return true,
                other => early.push(other),
            }
        }
        false
    })
    .await;
    if !matches!(gathered, Ok(true)) {
        return Err(PeerError::Timeout("ICE gathering").into());
    }
    // Put back what arrived meanwhile (state changes, tracks) for the watcher.
    let (tx, new_rx) = mpsc::unbounded_channel();
    for ev in early {
        if !matches!(ev, PeerEvent::LocalCandidate(_)) {
            let _ = tx.send(ev);
        }
    }
    tokio::spawn(async move {
        let mut rx = rx;
        while let Some(ev) = rx.recv().await {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    let sdp = peer
        .pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .ok_or(SfuError::State("no local description"))?;
    Ok((sdp, new_rx))
}

/// Per-connection watcher: forwards local candidates, tracks connection state, starts the
/// publisher read loop for incoming tracks, and reports a media timeout when the connection
/// fails or does not (re)connect in time.
#[allow(clippy::too_many_arguments)]
async fn watch_peer(
    mut rx: mpsc::UnboundedReceiver<PeerEvent>,
    factory: PeerFactory,
    target: Target,
    events: mpsc::UnboundedSender<ParticipantEvent>,
    connected: Arc<AtomicBool>,
    media_timeout: Duration,
    publisher: Option<PublisherCtx>,
    listener: Option<ListenerCtx>,
) {
    let mut deadline = Some(tokio::time::Instant::now() + media_timeout);
    let mut counted = false;
    let mut count = |up: bool| {
        if let Some(l) = &listener
            && up != counted
        {
            if up {
                l.count.fetch_add(1, Ordering::Relaxed);
                l.events.emit(RoomEvent::Listening {
                    room: l.room.to_string(),
                    participant: l.participant.to_string(),
                });
            } else {
                l.count.fetch_sub(1, Ordering::Relaxed);
            }
            counted = up;
        }
    };
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                None => break,
                Some(PeerEvent::LocalCandidate(c)) => {
                    let candidate = c.map(|c| factory.announce_candidate(c));
                    let _ = events.send(ParticipantEvent::LocalCandidate { target, candidate });
                }
                Some(PeerEvent::State(s)) => {
                    tracing::debug!(?target, state = %s, "peer connection state");
                    match s {
                        RTCPeerConnectionState::Connected => {
                            connected.store(true, Ordering::Relaxed);
                            count(true);
                            deadline = None;
                        }
                        RTCPeerConnectionState::Disconnected => {
                            connected.store(false, Ordering::Relaxed);
                            count(false);
                            deadline.get_or_insert(tokio::time::Instant::now() + media_timeout);
                        }
                        RTCPeerConnectionState::Failed => {
                            connected.store(false, Ordering::Relaxed);
                            count(false);
                            deadline = None;
                            let _ = events.send(ParticipantEvent::MediaTimeout(target));
                        }
                        RTCPeerConnectionState::Closed => {
                            connected.store(false, Ordering::Relaxed);
                            count(false);
                            break;
                        }
                        _ => {}
                    }
                }
                Some(PeerEvent::Track(track)) => {
                    if let Some(ctx) = &publisher {
                        tokio::spawn(read_loop(track, ctx.clone()));
                    }
                }
            },
            _ = sleep => {
                deadline = None;
                let _ = events.send(ParticipantEvent::MediaTimeout(target));
            }
        }
    }
    count(false);
}

/// A subscribe connection's place in its room's listener count.
struct ListenerCtx {
    count: Arc<std::sync::atomic::AtomicUsize>,
    events: Emitter,
    room: Arc<str>,
    participant: ParticipantId,
}

#[derive(Clone)]
struct PublisherCtx {
    room: Weak<Room>,
    producer: ParticipantId,
    level_ext: Arc<AtomicU8>,
    stats: Arc<MediaStats>,
}

/// The publisher's hot path: every packet of its track fanned out to the room's subscribers
/// and taps.
async fn read_loop(track: Arc<dyn TrackRemote>, ctx: PublisherCtx) {
    if track.kind().await != RtpCodecKind::Audio {
        tracing::warn!(participant = %ctx.producer, "ignoring a non-audio track");
        return;
    }
    while let Some(ev) = track.poll().await {
        let pkt: rtp::Packet = match ev {
            TrackRemoteEvent::OnRtpPacket(p) => p,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        let Some(room) = ctx.room.upgrade() else {
            break;
        };
        let now = Instant::now();
        let ext = ctx.level_ext.load(Ordering::Relaxed);
        let level = if ext != 0 {
            pkt.header
                .get_extension(ext)
                .and_then(|b| parse_audio_level(&b))
                .map(|(l, _)| l)
        } else {
            None
        };
        MediaStats::add(&ctx.stats.packets_in, 1);
        MediaStats::add(&ctx.stats.bytes_in, pkt.payload.len() as u64);
        if let Some(l) = level {
            lock(&room.levels).observe(&ctx.producer, l, now);
        }
        let mp = Arc::new(MediaPacket {
            producer: ctx.producer.clone(),
            ssrc: pkt.header.ssrc,
            payload_type: pkt.header.payload_type,
            sequence: pkt.header.sequence_number,
            timestamp: pkt.header.timestamp,
            marker: pkt.header.marker,
            audio_level: level,
            arrival: now,
            arrival_wall: SystemTime::now(),
            payload: pkt.payload,
            system: false,
            only_to: None,
        });
        let routes = room.routes.load();
        fan_out(&routes, &mp, &ctx.stats);
    }
    tracing::debug!(participant = %ctx.producer, "publisher track ended");
}

enum WriterCtrl {
    Add {
        producer: ParticipantId,
        track: Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        pt: u8,
    },
    Remove {
        producer: ParticipantId,
    },
}

/// A subscriber's writer: owns its consumers (producer -> local track + rewriter) and writes
/// every queued packet with that output's SSRC, sequence and timestamp.
async fn writer_task(
    mut rx: mpsc::Receiver<SinkMsg>,
    mut ctrl: mpsc::UnboundedReceiver<WriterCtrl>,
    connected: Arc<AtomicBool>,
    stats: Arc<MediaStats>,
) {
    let mut consumers: ConsumerSet<(Arc<TrackLocalStaticRTP>, u8)> =
        ConsumerSet::new(OPUS_CLOCK_RATE);
    loop {
        tokio::select! {
            biased;
            c = ctrl.recv() => match c {
                Some(WriterCtrl::Add { producer, track, ssrc, pt }) => {
                    consumers.add(producer, (track, pt), ssrc);
                }
                Some(WriterCtrl::Remove { producer }) => {
                    consumers.remove(&producer);
                }
                None => break,
            },
            m = rx.recv() => {
                let Some(SinkMsg::Packet(p)) = m else { break };
                if !connected.load(Ordering::Relaxed) {
                    continue;
                }
                let Some(((track, pt), h)) = consumers.route(&p) else { continue };
                let packet = rtp::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        marker: p.marker,
                        payload_type: *pt,
                        sequence_number: h.sequence,
                        timestamp: h.timestamp,
                        ssrc: h.ssrc,
                        ..Default::default()
                    },
                    payload: p.payload.clone(),
                };
                let len = packet.payload.len() as u64;
                match track.write_rtp(packet).await {
                    Ok(()) => {
                        MediaStats::add(&stats.packets_out, 1);
                        MediaStats::add(&stats.bytes_out, len);
                    }
                    Err(e) => {
                        MediaStats::add(&stats.forward_errors, 1);
                        tracing::trace!(error = %e, "write_rtp");
                    }
                }
            }
        }
    }
}

async fn whep_supervisor(
    sfu: Sfu,
    room: Arc<Room>,
    sub: ParticipantId,
    peer: Peer,
    mut stop: oneshot::Receiver<LeaveReason>,
    mut events: mpsc::UnboundedReceiver<ParticipantEvent>,
    _ctrl: mpsc::UnboundedSender<WriterCtrl>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = events.recv() => match ev {
                Some(ParticipantEvent::MediaTimeout(_)) | None => break,
                Some(_) => {}
            },
        }
    }
    lock(&sfu.inner.resources).remove(sub.as_ref());
    {
        let mut st = lock(&room.state);
        st.sinks.retain(|s| s.subscriber != sub);
        room.publish_routes(&st);
    }
    MediaStats::gauge(&sfu.inner.stats.subscribers, -1);
    peer.close().await;
    sfu.inner.release_live();
    tracing::info!(subscriber = %sub, "WHEP session ended");
}

struct SystemClock {
    ssrc: u32,
    seq: u16,
    started: Instant,
}

/// The server's own audio source in a room (see [`Sfu::add_system_source`]).
pub struct SystemSource {
    id: ParticipantId,
    room: Arc<Room>,
    stats: Arc<MediaStats>,
    clock: Arc<Mutex<SystemClock>>,
}

impl SystemSource {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether any subscribe connection in the room is up right now.
    pub fn listening(&self) -> bool {
        self.room.listeners.load(Ordering::Relaxed) > 0
    }

    /// Wait until at least one subscribe connection in the room is up (someone would hear
    /// what is played), at most `timeout`. Returns whether someone is listening.
    pub async fn wait_for_listener(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.room.listeners.load(Ordering::Relaxed) > 0 {
                return true;
            }
            if Instant::now() >= deadline || lock(&self.room.state).closed {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Play 20 ms Opus frames into the room, paced in real time. Returns when done (or when
    /// the room is gone).
    pub async fn play(&self, frames: Arc<Vec<bytes::Bytes>>) {
        self.play_inner(frames, None).await
    }

    /// Play frames to one subscriber only (e.g. the recording announcement for someone who
    /// just started listening). They go out on a separate RTP source, so that subscriber's
    /// output stays continuous and nobody else notices.
    pub async fn play_to(&self, frames: Arc<Vec<bytes::Bytes>>, participant: &str) {
        self.play_inner(frames, Some(Arc::from(participant))).await
    }

    async fn play_inner(&self, frames: Arc<Vec<bytes::Bytes>>, only_to: Option<ParticipantId>) {
        let private = only_to.as_ref().map(|_| SystemClock {
            ssrc: rand::random(),
            seq: rand::random(),
            started: Instant::now(),
        });
        let private = private.map(Mutex::new);
        let room = Arc::downgrade(&self.room);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for (i, f) in frames.iter().enumerate() {
            tick.tick().await;
            let Some(room) = room.upgrade() else { return };
            if lock(&room.state).closed {
                return;
            }
            let now = Instant::now();
            let (ssrc, seq, ts) = {
                let mut c = match &private {
                    Some(p) => lock(p),
                    None => lock(&self.clock),
                };
                c.seq = c.seq.wrapping_add(1);
                // RTP time follows the wall clock since the source started, in 20 ms steps.
                let frames_since = (now.duration_since(c.started).as_millis() / 20) as u32;
                (c.ssrc, c.seq, frames_since.wrapping_mul(960))
            };
            let mp = Arc::new(MediaPacket {
                producer: self.id.clone(),
                ssrc,
                payload_type: OPUS_PT,
                sequence: seq,
                timestamp: ts,
                marker: i == 0,
                audio_level: None,
                arrival: now,
                arrival_wall: SystemTime::now(),
                payload: f.clone(),
                system: true,
                only_to: only_to.clone(),
            });
            let routes = room.routes.load();
            fan_out(&routes, &mp, &self.stats);
        }
    }
}

impl Drop for SystemSource {
    fn drop(&mut self) {
        let mut st = lock(&self.room.state);
        if let Ok((_, notices)) = st.model.leave(&self.id, LeaveReason::Left) {
            self.room.dispatch(&st, notices);
        }
    }
}

/// Periodic audio levels and active-speaker changes for one room.
async fn level_ticker(room: Weak<Room>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(r) = room.upgrade() else { break };
        let (levels, speaker, changed) = lock(&r.levels).tick(Instant::now());
        let st = lock(&r.state);
        if st.closed {
            break;
        }
        if levels.is_empty() {
            continue;
        }
        for tx in st.members.values() {
            let _ = tx.send(ParticipantEvent::AudioLevels {
                levels: levels.clone(),
                active_speaker: speaker.clone(),
            });
            if changed {
                let _ = tx.send(ParticipantEvent::ActiveSpeaker(speaker.clone()));
            }
        }
    }
}

/// One consumed producer on a subscribe connection.
struct Consumer {
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    /// Whether the writer task knows it (only after the client's answer).
    announced: bool,
}

struct SubscribeSide {
    peer: Peer,
    ctrl: mpsc::UnboundedSender<WriterCtrl>,
    tracks: HashMap<ParticipantId, Consumer>,
}

/// One participant in a room, owned by its driver (a signaling session or WHIP supervisor).
pub struct Participant {
    pub id: ParticipantId,
    pub meta: ParticipantMeta,
    room: Arc<Room>,
    sfu: Sfu,
    /// Everything this participant must react to or relay.
    pub events: mpsc::UnboundedReceiver<ParticipantEvent>,
    events_tx: mpsc::UnboundedSender<ParticipantEvent>,
    publish: Option<Peer>,
    level_ext: Arc<AtomicU8>,
    subscribe: Option<SubscribeSide>,
    left: bool,
}

impl Participant {
    pub fn room_name(&self) -> &str {
        &self.room.name
    }

    /// Apply a publish offer and return the answer. With `complete`, wait for ICE gathering and
    /// return the SDP with every candidate (WHIP); otherwise candidates trickle as events.
    pub async fn publish(&mut self, offer: String, complete: bool) -> Result<String, SfuError> {
        if !offers_opus(&offer) {
            return Err(SfuError::BadSdp(
                "the offer has no audio m-line with Opus/48000".into(),
            ));
        }
        let desc = RTCSessionDescription::offer(offer.clone())
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let timeout = self.sfu.inner.cfg.negotiation_timeout;
        let mut gather_rx = None;
        if self.publish.is_none() {
            let (ptx, prx) = mpsc::unbounded_channel();
            let peer = self.sfu.inner.factory.create(ptx).await?;
            peer.pc
                .add_transceiver_from_kind(
                    RtpCodecKind::Audio,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await
                .map_err(PeerError::from)?;
            self.publish = Some(peer);
            gather_rx = Some(prx);
        }
        if let Some(id) = extmap_id(&offer, AUDIO_LEVEL_URI) {
            self.level_ext.store(id, Ordering::Relaxed);
        }
        let Some(peer) = self.publish.as_ref() else {
            return Err(SfuError::State("publish connection missing"));
        };
        let negotiate = async {
            peer.pc
                .set_remote_description(desc)
                .await
                .map_err(|e| SfuError::BadSdp(e.to_string()))?;
            let answer = peer.pc.create_answer(None).await.map_err(PeerError::from)?;
            let sdp = answer.sdp.clone();
            peer.pc
                .set_local_description(answer)
                .await
                .map_err(PeerError::from)?;
            Ok::<_, SfuError>(sdp)
        };
        let mut sdp = tokio::time::timeout(timeout, negotiate)
            .await
            .map_err(|_| PeerError::Timeout("publish negotiation"))??;
        if let Some(prx) = gather_rx {
            let ctx = PublisherCtx {
                room: Arc::downgrade(&self.room),
                producer: self.id.clone(),
                level_ext: self.level_ext.clone(),
                stats: self.sfu.inner.stats.clone(),
            };
            let rx = if complete {
                let (full, rest) = complete_local_sdp(peer, prx, timeout).await?;
                sdp = full;
                rest
            } else {
                prx
            };
            tokio::spawn(watch_peer(
                rx,
                self.sfu.inner.factory.clone(),
                Target::Publish,
                self.events_tx.clone(),
                Arc::new(AtomicBool::new(false)),
                self.sfu.inner.cfg.media_timeout,
                Some(ctx),
                None,
            ));
        }
        let mut st = lock(&self.room.state);
        let notices = st.model.set_publishing(&self.id, true)?;
        self.room.dispatch(&st, notices);
        drop(st);
        Ok(self.sfu.inner.factory.announce_sdp(sdp))
    }

    /// Bring the subscribe connection up to date with the room's producers and create an
    /// offer. Returns the SDP and the tracks it carries.
    pub async fn subscribe_offer(&mut self) -> Result<(String, Vec<SubscribedTrack>), SfuError> {
        if self.subscribe.is_none() {
            let (ptx, prx) = mpsc::unbounded_channel();
            let peer = self.sfu.inner.factory.create(ptx).await?;
            let connected = Arc::new(AtomicBool::new(false));
            let (sink_tx, sink_rx) = mpsc::channel(self.sfu.inner.cfg.subscriber_queue);
            let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
            tokio::spawn(writer_task(
                sink_rx,
                ctrl_rx,
                connected.clone(),
                self.sfu.inner.stats.clone(),
            ));
            tokio::spawn(watch_peer(
                prx,
                self.sfu.inner.factory.clone(),
                Target::Subscribe,
                self.events_tx.clone(),
                connected,
                self.sfu.inner.cfg.media_timeout,
                None,
                Some(ListenerCtx {
                    count: self.room.listeners.clone(),
                    events: self.sfu.inner.events.clone(),
                    room: self.room.name.clone(),
                    participant: self.id.clone(),
                }),
            ));
            {
                let mut st = lock(&self.room.state);
                st.sinks.push(SubscriberSink {
                    subscriber: self.id.clone(),
                    only: None,
                    tx: sink_tx,
                });
                self.room.publish_routes(&st);
            }
            MediaStats::gauge(&self.sfu.inner.stats.subscribers, 1);
            self.subscribe = Some(SubscribeSide {
                peer,
                ctrl: ctrl_tx,
                tracks: HashMap::new(),
            });
        }
        let wanted = lock(&self.room.state).model.producers_for(&self.id);
        let timeout = self.sfu.inner.cfg.negotiation_timeout;
        let Some(sub) = self.subscribe.as_mut() else {
            return Err(SfuError::State("subscribe connection missing"));
        };
        let work = async {
            // Remove tracks of producers that are gone.
            let gone: Vec<ParticipantId> = sub
                .tracks
                .keys()
                .filter(|k| !wanted.iter().any(|m| &m.id == *k))
                .cloned()
                .collect();
            for g in gone {
                let _ = sub.ctrl.send(WriterCtrl::Remove {
                    producer: g.clone(),
                });
                if let Some(c) = sub.tracks.remove(&g) {
                    sub.peer
                        .pc
                        .remove_track(&c.sender)
                        .await
                        .map_err(PeerError::from)?;
                }
            }
            for m in &wanted {
                if sub.tracks.contains_key(&m.id) {
                    continue;
                }
                let ssrc = rand::random::<u32>();
                let track = Arc::new(local_track(&m.id, ssrc));
                let sender = sub
                    .peer
                    .pc
                    .add_track(track.clone() as Arc<dyn TrackLocal>)
                    .await
                    .map_err(PeerError::from)?;
                sub.tracks.insert(
                    m.id.clone(),
                    Consumer {
                        track,
                        sender,
                        ssrc,
                        announced: false,
                    },
                );
            }
            let offer = sub
                .peer
                .pc
                .create_offer(None)
                .await
                .map_err(PeerError::from)?;
            let sdp = offer.sdp.clone();
            sub.peer
                .pc
                .set_local_description(offer)
                .await
                .map_err(PeerError::from)?;
            Ok::<_, SfuError>(sdp)
        };
        let sdp = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| PeerError::Timeout("subscribe offer"))??;
        let tracks = wanted
            .iter()
            .map(|m| SubscribedTrack {
                participant_id: m.id.clone(),
                stream_id: m.id.to_string(),
                track_id: format!("audio-{}", m.id),
            })
            .collect();
        Ok((self.sfu.inner.factory.announce_sdp(sdp), tracks))
    }

    /// Apply the client's answer to the latest subscribe offer; new tracks start flowing.
    pub async fn subscribe_answer(&mut self, sdp: String) -> Result<(), SfuError> {
        let timeout = self.sfu.inner.cfg.negotiation_timeout;
        let Some(sub) = self.subscribe.as_mut() else {
            return Err(SfuError::State("no subscribe offer was made"));
        };
        let desc =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        tokio::time::timeout(timeout, sub.peer.pc.set_remote_description(desc))
            .await
            .map_err(|_| PeerError::Timeout("subscribe answer"))?
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        for (producer, c) in sub.tracks.iter_mut() {
            if c.announced {
                continue;
            }
            let pt = negotiated_pt(&c.sender).await;
            let _ = sub.ctrl.send(WriterCtrl::Add {
                producer: producer.clone(),
                track: c.track.clone(),
                ssrc: c.ssrc,
                pt,
            });
            c.announced = true;
        }
        Ok(())
    }

    /// Add a trickled remote candidate (`None` = end of candidates).
    pub async fn add_remote_candidate(
        &self,
        target: Target,
        candidate: Option<RTCIceCandidateInit>,
    ) -> Result<(), SfuError> {
        let peer = match target {
            Target::Publish => self.publish.as_ref(),
            Target::Subscribe => self.subscribe.as_ref().map(|s| &s.peer),
        };
        let Some(peer) = peer else {
            return Err(SfuError::State("that connection does not exist yet"));
        };
        let Some(c) = candidate else {
            return Ok(());
        };
        if c.candidate.trim().is_empty() {
            // An empty candidate string also means end-of-candidates.
            return Ok(());
        }
        peer.pc
            .add_ice_candidate(c)
            .await
            .map_err(|e| SfuError::BadSdp(format!("bad ICE candidate: {e}")))
    }

    /// Leave the room and close both connections.
    pub async fn leave(mut self, reason: LeaveReason) {
        self.detach(reason);
        if let Some(p) = self.publish.take() {
            p.close().await;
        }
        if let Some(s) = self.subscribe.take() {
            s.peer.close().await;
        }
    }

    /// Remove from the room (sync part of leaving).
    fn detach(&mut self, reason: LeaveReason) {
        if self.left {
            return;
        }
        self.left = true;
        let mut st = lock(&self.room.state);
        if let Ok((_, notices)) = st.model.leave(&self.id, reason) {
            st.members.remove(&self.id);
            let before = st.sinks.len();
            st.sinks.retain(|s| s.subscriber != self.id);
            if st.sinks.len() != before {
                MediaStats::gauge(&self.sfu.inner.stats.subscribers, -1);
            }
            self.room.publish_routes(&st);
            self.room.dispatch(&st, notices);
            if st.model.is_empty() {
                st.closed = true;
            }
            MediaStats::gauge(&self.sfu.inner.stats.participants, -1);
        }
        // Under the room's lock: a `Left` can never follow the room's `Closed`, which only the
        // last leaver's `drop_room_if_closed` below can send.
        self.sfu.inner.events.emit(RoomEvent::Left {
            room: self.room.name.to_string(),
            participant: self.id.to_string(),
            reason,
        });
        drop(st);
        lock(&self.room.levels).remove(&self.id);
        self.sfu.drop_room_if_closed(&self.room);
        tracing::info!(room = %self.room.name, participant = %self.id, ?reason, "left");
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.sfu.inner.release_live();
        if self.left {
            return;
        }
        self.detach(LeaveReason::Disconnected);
        let publish = self.publish.take();
        let subscribe = self.subscribe.take();
        if (publish.is_some() || subscribe.is_some())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Some(p) = publish {
                    p.close().await;
                }
                if let Some(s) = subscribe {
                    s.peer.close().await;
                }
            });
        }
    }
}

mod leg;
mod webrtc_leg;
pub use leg::LegPort;
pub use webrtc_leg::WebRtcMedia;

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
