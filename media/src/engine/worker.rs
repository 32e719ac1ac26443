//! One worker: an OS thread that owns one UDP socket, every peer connection on it, and the rooms
//! those connections are in.
//!
//! ## Threading
//! [`Worker::spawn`] binds the socket, then starts a thread running a current-thread tokio
//! runtime with a single task: the loop in `Engine::run`. Tokio rather than a blocking loop
//! because the loop must wake on three things (the socket, the command channel, the earliest
//! connection timer) and tokio's `select!` over a readiness future, an `mpsc` receiver and a
//! `Sleep` does that with epoll and no second thread or self-pipe; commands are answered on
//! tokio oneshots that async callers await directly. The runtime is not on the per-packet path:
//! after a readiness wake the loop drains the socket with non-blocking `try_recv_from` until it
//! would block (bounded by a budget), and sends with `try_send_to`, so one `select!` is paid
//! per burst, not per datagram. Nothing else runs on the runtime.
//!
//! ## Connections
//! Each participant has ONE connection. The client offers (sendrecv or sendonly Opus); the
//! server answers it receive-only for that m-line. Each other participant's audio is a
//! server-added send-only transceiver, negotiated by server offers: whenever a room changes,
//! every member whose send set changed gets a [`PeerEvent::Offer`] and must reply with
//! [`Worker::answer`]. One offer is outstanding per connection at a time; changes made while
//! one is outstanding go in the next offer. The client never offers again after joining, so
//! there is no glare. Compared with commhub's publish + subscribe pair this halves the ICE and
//! DTLS handshakes per participant and the connections per socket; a separate subscribe
//! connection would need the same renegotiation anyway whenever the room changes.
//!
//! Server settings: ICE-lite (clients always control, nothing to nominate, no checks sent), the
//! host candidate of the shared socket (the announced IP if configured), DTLS role server when
//! answering (`a=setup:passive`: the client's ClientHello starts DTLS at once), SRTP AEAD
//! AES-GCM profiles first, no interceptors (no NACK, TWCC, RTCP reports: an audio forward does
//! not need them), no mDNS, peer-reflexive acceptance without waiting.
//!
//! ## Forwarding
//! A datagram is routed by [`DemuxTable`] and handed to the connection's `handle_read`. Every
//! RTP packet it yields (`poll_media_read`) is P's audio, written to each other room member's
//! send-only sender for P with that sender's SSRC and payload type, header extensions dropped,
//! sequence numbers, timestamps and payload untouched (each sender carries exactly one producer
//! for its whole life, so no rewrite is needed). Each destination's `poll_write` output goes
//! straight to the socket. No lock, no task hop, no queue between source and destinations.
//!
//! Timers: each connection's `poll_timeout` is re-read after it was touched and kept in a
//! min-heap with at most one live entry per connection (an entry is pushed only when it is
//! earlier than the one already armed; a stale entry is skipped when it pops).

//! ## Cost (measured, `tests/engine_bench.rs`, release, loopback, 2 shared cores)
//! 10 rooms x 10 webrtc-rs clients (45 000 forwarded packets/s): 7.2-7.7 µs of worker-thread
//! CPU per forwarded packet. perf on the worker thread: rtc's write pipeline (`poll_write`
//! running every handler, mostly moving messages between their queues: memmove alone ~25 %)
//! ~42 %, of which SRTP AES-GCM encryption ~6 %; `sendto` ~30 %; rtc's read pipeline ~11 %;
//! `write_rtp` ~5 %; this module's own code ~7 %. Going below ~4.5 µs needs the per-packet
//! path out of rtc's pipeline (SRTP done here with the DTLS-exported keys, which rtc does not
//! expose) and batched sends.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::statistics::StatsSelector;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::demux::{DemuxTable, Kind, Route, classify, is_nomination};
use crate::forward::SinkMsg;
use crate::level::AUDIO_LEVEL_URI;
use crate::peer::{OPUS_CLOCK_RATE, OPUS_PT, opus_codec};
use crate::rewrite::Rewriter;
use crate::room::ParticipantId;
use crate::stats::MediaStats;

/// Largest datagram read.
const RECV_BUF: usize = 2048;
/// Requested socket send and receive buffer size.
const SOCKET_BUFFER: usize = 4 << 20;
/// Shortest ICE disconnected / failed timeouts: clients refresh consent about every 5 s and
/// the lite server sends no checks, so shorter ones would flap on healthy connections.
const LITE_MIN_DISCONNECTED: Duration = Duration::from_secs(12);
const LITE_MIN_FAILED: Duration = Duration::from_secs(30);
/// Connectivity checks kept per connection while its answer is on its way.
const EARLY_CHECKS: usize = 8;
/// Datagrams handled per wake before commands and timers get a turn.
const RECV_BUDGET: usize = 256;

/// How a worker is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the socket binds; port 0 picks one. An unspecified IP (0.0.0.0) needs `announce_ip`.
    pub bind: SocketAddr,
    /// The IP put in the host candidate instead of the bind IP (1:1 NAT, or a 0.0.0.0 bind).
    pub announce_ip: Option<IpAddr>,
    /// ICE consent: disconnected after this long without traffic, failed (and removed) after
    /// `ice_failed`.
    pub ice_disconnected: Duration,
    pub ice_failed: Duration,
    /// The SFU's counters: packets and bytes written to connections are added to its
    /// `packets_out` / `bytes_out` too.
    pub stats: Option<Arc<MediaStats>>,
}

impl EngineConfig {
    pub fn local(bind: SocketAddr) -> Self {
        EngineConfig {
            bind,
            announce_ip: None,
            ice_disconnected: Duration::from_secs(5),
            ice_failed: Duration::from_secs(15),
            stats: None,
        }
    }
}

/// Errors of a command.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("participant {0} is already on this worker")]
    Duplicate(String),
    #[error("no participant {0} on this worker")]
    NoParticipant(String),
    #[error("not awaiting an answer from {0}")]
    NoOfferOutstanding(String),
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("rtc: {0}")]
    Rtc(String),
    #[error("the worker has stopped")]
    Stopped,
}

/// What a participant's connection tells its signaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A server offer (the room changed; [`Worker::join`] connections only); reply with
    /// [`Worker::answer`].
    Offer(String),
    /// ICE and DTLS are up (again).
    Connected,
    /// ICE consent lapsed; it may come back ([`PeerEvent::Connected`]) or fail.
    Disconnected,
    /// The connection failed or closed and the participant was removed from its room.
    Closed,
}

/// Called on the worker thread with every RTP packet a publishing connection yields, before
/// it is forwarded (header extensions still on): the room's levels, taps and phone legs.
/// Must not block.
pub type PacketHook = Arc<dyn Fn(&rtp::Packet, Instant) + Send + Sync>;

/// Packets queued towards a worker from outside it (system audio, phone legs) before drops.
const INJECT_QUEUE: usize = 4096;

/// Worker counters, readable from any thread.
#[derive(Debug, Default)]
pub struct Counters {
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    /// RTP packets written to a destination sender (one per destination).
    pub forwarded: AtomicU64,
    /// First byte in no RFC 7983 range.
    pub junk: AtomicU64,
    /// STUN-range datagrams that do not parse.
    pub bad_stun: AtomicU64,
    /// DTLS/RTP (or non-request STUN) from an address no connection learned.
    pub unknown_source: AtomicU64,
    /// Binding requests for a ufrag no connection has.
    pub stun_unknown_ufrag: AtomicU64,
    /// RTP datagrams from a connected peer that rtc turned into no packet: SRTP authentication
    /// or replay failures, unknown SSRCs. (SRTCP failures are not told apart: rtc consumes
    /// RTCP without handing it out when no interceptor wants it.)
    pub srtp_failures: AtomicU64,
    /// RTCP datagrams from known peers (reports; not forwarded).
    pub rtcp_in: AtomicU64,
    /// Packets from outside the worker (system audio, phone legs) written to a connection.
    pub injected: AtomicU64,
    /// Datagrams the socket would not take (full send buffer) or refused.
    pub send_errors: AtomicU64,
}

/// A copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub forwarded: u64,
    pub junk: u64,
    pub bad_stun: u64,
    pub unknown_source: u64,
    pub stun_unknown_ufrag: u64,
    pub srtp_failures: u64,
    pub rtcp_in: u64,
    pub injected: u64,
    pub send_errors: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            datagrams_in: g(&self.datagrams_in),
            datagrams_out: g(&self.datagrams_out),
            forwarded: g(&self.forwarded),
            junk: g(&self.junk),
            bad_stun: g(&self.bad_stun),
            unknown_source: g(&self.unknown_source),
            stun_unknown_ufrag: g(&self.stun_unknown_ufrag),
            srtp_failures: g(&self.srtp_failures),
            rtcp_in: g(&self.rtcp_in),
            injected: g(&self.injected),
            send_errors: g(&self.send_errors),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

enum Command {
    Join {
        room: String,
        participant: String,
        offer: String,
        events: mpsc::UnboundedSender<PeerEvent>,
        reply: oneshot::Sender<Result<String, EngineError>>,
    },
    Answer {
        participant: String,
        sdp: String,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Leave {
        participant: String,
        reply: oneshot::Sender<bool>,
    },
    Publish {
        key: String,
        room: Arc<str>,
        producer: ParticipantId,
        offer: String,
        events: mpsc::UnboundedSender<PeerEvent>,
        hook: Option<PacketHook>,
        reply: oneshot::Sender<Result<String, EngineError>>,
    },
    Subscribe {
        key: String,
        room: Arc<str>,
        participant: ParticipantId,
        producers: Vec<ParticipantId>,
        events: mpsc::UnboundedSender<PeerEvent>,
        reply: oneshot::Sender<Result<String, EngineError>>,
    },
    Close {
        key: String,
    },
}

/// Handle to a worker thread. Dropping it stops the thread (connections are closed first).
pub struct Worker {
    tx: Option<mpsc::UnboundedSender<Command>>,
    inject: mpsc::Sender<SinkMsg>,
    counters: Arc<Counters>,
    local_addr: SocketAddr,
    tid: Arc<AtomicI32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Bind the socket and start the worker thread.
    pub fn spawn(cfg: EngineConfig) -> io::Result<Worker> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(cfg.bind),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // One socket carries every connection of the worker: a default-sized receive buffer
        // (~200 small datagrams) overflows if the thread is off CPU for a few tens of ms.
        // Best effort: the kernel caps it at net.core.rmem_max / wmem_max.
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
        sock.bind(&cfg.bind.into())?;
        sock.set_nonblocking(true)?;
        let std_sock: std::net::UdpSocket = sock.into();
        let bound = std_sock.local_addr()?;
        let ip = cfg.announce_ip.unwrap_or(bound.ip());
        if ip.is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an unspecified bind IP needs announce_ip",
            ));
        }
        let local_addr = SocketAddr::new(ip, bound.port());
        let counters = Arc::new(Counters::default());
        let tid = Arc::new(AtomicI32::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let (inject, inject_rx) = mpsc::channel(INJECT_QUEUE);
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let counters = counters.clone();
            let tid = tid.clone();
            std::thread::Builder::new()
                .name(format!("media-engine-{}", bound.port()))
                .spawn(move || {
                    tid.store(current_tid().unwrap_or(0), Ordering::Relaxed);
                    let _ = started_tx.send(());
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "media engine runtime");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let socket = match UdpSocket::from_std(std_sock) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::error!(error = %e, "media engine socket");
                                return;
                            }
                        };
                        Engine::new(cfg, socket, local_addr, counters)
                            .run(rx, inject_rx)
                            .await;
                    });
                })?
        };
        // The thread id is known once the thread runs.
        let _ = started_rx.recv();
        Ok(Worker {
            tx: Some(tx),
            inject,
            counters,
            local_addr,
            tid,
            thread: Some(thread),
        })
    }

    /// The address in the host candidate (announced IP, bound port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The worker thread's Linux thread id (0 when unknown).
    pub fn thread_id(&self) -> i32 {
        self.tid.load(Ordering::Relaxed)
    }

    /// The worker thread's CPU time so far (utime + stime), when readable.
    pub fn cpu_time(&self) -> Option<Duration> {
        thread_cpu(self.thread_id())
    }

    fn send(&self, c: Command) -> Result<(), EngineError> {
        self.tx
            .as_ref()
            .ok_or(EngineError::Stopped)?
            .send(c)
            .map_err(|_| EngineError::Stopped)
    }

    /// Join `participant` to `room` with its client's offer; returns the answer (with the host
    /// candidate). Server offers for the other members' tracks follow on `events`: the caller
    /// must deliver this answer to the client before any of them.
    pub async fn join(
        &self,
        room: &str,
        participant: &str,
        offer: String,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<String, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Join {
            room: room.to_owned(),
            participant: participant.to_owned(),
            offer,
            events,
            reply,
        })?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// The client's answer to the last [`PeerEvent::Offer`].
    pub async fn answer(&self, participant: &str, sdp: String) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Answer {
            participant: participant.to_owned(),
            sdp,
            reply,
        })?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// The queue a room's [`SubscriberSink`](crate::SubscriberSink) for this worker sends to:
    /// packets from outside the worker (system audio, phone legs) for its connections.
    pub fn inject_sender(&self) -> mpsc::Sender<SinkMsg> {
        self.inject.clone()
    }

    /// A publishing connection (`key`, unique on the worker) from the client's offer: the
    /// server receives `producer`'s audio and forwards it to the room's connections that carry
    /// it; `hook` sees every packet first. Returns the complete answer (the worker's host
    /// candidate; ICE-lite, so the client's candidates are not needed). A second call with the
    /// same key replaces the connection.
    pub async fn publish(
        &self,
        key: &str,
        room: Arc<str>,
        producer: ParticipantId,
        offer: String,
        events: mpsc::UnboundedSender<PeerEvent>,
        hook: Option<PacketHook>,
    ) -> Result<String, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish {
            key: key.to_owned(),
            room,
            producer,
            offer,
            events,
            hook,
            reply,
        })?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// A subscribing connection (`key`, created on first use) for `participant` that carries
    /// exactly `producers`, one send-only track each (stream id = the producer's id, track id
    /// `audio-<id>`): returns the server's offer. The client's answer goes to
    /// [`Worker::answer`] with the same key.
    pub async fn subscribe(
        &self,
        key: &str,
        room: Arc<str>,
        participant: ParticipantId,
        producers: Vec<ParticipantId>,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<String, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            key: key.to_owned(),
            room,
            participant,
            producers,
            events,
            reply,
        })?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Close a connection (no answer awaited; unknown keys are ignored).
    pub fn close(&self, key: &str) {
        let _ = self.send(Command::Close {
            key: key.to_owned(),
        });
    }

    /// Remove a participant; false when it was not there.
    pub async fn leave(&self, participant: &str) -> Result<bool, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Leave {
            participant: participant.to_owned(),
            reply,
        })?;
        rx.await.map_err(|_| EngineError::Stopped)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the loop.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The calling thread's Linux thread id, from `/proc/thread-self` (`<pid>/task/<tid>`).
fn current_tid() -> Option<i32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU time (utime + stime, fields 14 and 15 of `/proc/self/task/<tid>/stat`, in USER_HZ =
/// 100 ticks a second on Linux) of a thread of this process.
pub fn thread_cpu(tid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    // rest starts at field 3; utime is field 14.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// A connection's sender for one producer.
struct SendSlot {
    producer: ParticipantId,
    sender: RTCRtpSenderId,
    /// This output's SSRC, sequence numbers and timestamps, continuous whatever the source.
    rw: Rewriter,
    pt: u8,
    /// In an offer the client has answered: packets may flow.
    ready: bool,
    /// In the offer now outstanding.
    offered: bool,
}

struct Conn {
    pc: RTCPeerConnection,
    /// The key commands name it by.
    key: String,
    /// Whose connection it is (for packets meant for one participant only).
    participant: ParticipantId,
    room: Arc<str>,
    /// What it publishes, if anything.
    producer: Option<ParticipantId>,
    hook: Option<PacketHook>,
    /// The worker makes its offers when its room changes ([`Worker::join`]); otherwise the
    /// caller does ([`Worker::subscribe`]).
    auto_offer: bool,
    events: mpsc::UnboundedSender<PeerEvent>,
    sends: Vec<SendSlot>,
    connected: bool,
    awaiting_answer: bool,
    /// The send set changed since the last offer.
    dirty: bool,
    /// The earliest timer entry in the heap for this connection.
    armed: Option<Instant>,
    /// Its SRTP profile was counted (once, at the first `connected`).
    counted_profile: bool,
    /// The remote description is set (datagrams can be handled).
    remote_set: bool,
    /// Checks that arrived before the remote description, replayed after it.
    early: Vec<(Vec<u8>, SocketAddr)>,
    /// A nomination (USE-CANDIDATE) rtc-ice did not act on because the pair had not yet
    /// succeeded its own triggered check: fed again after the next datagram from the peer
    /// (usually that check's response), instead of the client retransmitting it ~500 ms later.
    nomination: Option<(Vec<u8>, SocketAddr)>,
    /// ICE has selected a pair: before that rtc drops every non-STUN datagram.
    ice_up: bool,
    /// DTLS datagrams that arrived before ICE selected a pair (a browser sends its ClientHello
    /// once a check succeeds, before it nominates), replayed when it does instead of waiting
    /// for the client's DTLS retransmission (50 ms, then doubling).
    early_dtls: Vec<(Vec<u8>, SocketAddr)>,
}

impl Conn {
    /// A connection in its initial state (nothing sent, nothing received yet).
    fn new(
        pc: RTCPeerConnection,
        key: String,
        participant: ParticipantId,
        room: Arc<str>,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Self {
        Conn {
            pc,
            key,
            participant,
            room,
            producer: None,
            hook: None,
            auto_offer: false,
            events,
            sends: Vec::new(),
            connected: false,
            awaiting_answer: false,
            dirty: false,
            armed: None,
            counted_profile: false,
            remote_set: false,
            early: Vec::new(),
            nomination: None,
            ice_up: false,
            early_dtls: Vec::new(),
        }
    }
}

/// Count the SRTP profile a connection's DTLS handshake chose in the SFU's counters.
fn count_srtp_profile(pc: &mut RTCPeerConnection, stats: Option<&MediaStats>, now: Instant) {
    let Some(stats) = stats else { return };
    let report = pc.get_stats(now, StatsSelector::None);
    match report.transport().map(|t| t.srtp_cipher.as_str()) {
        Some(c) if c.contains("GCM") => MediaStats::add(&stats.srtp_aead_gcm, 1),
        Some(c) if !c.is_empty() => MediaStats::add(&stats.srtp_aes_cm, 1),
        _ => {}
    }
}

struct Engine {
    socket: UdpSocket,
    /// The host candidate's address; also the `local_addr` handed to rtc, which must match a
    /// local candidate for rtc-ice to accept the datagram.
    local: SocketAddr,
    cfg: EngineConfig,
    counters: Arc<Counters>,
    demux: DemuxTable<u32>,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    by_participant: HashMap<String, u32>,
    rooms: HashMap<Arc<str>, Vec<u32>>,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    buf: Vec<u8>,
    /// Packets read from one datagram, reused.
    pkts: Vec<rtp::Packet>,
}

/// Send everything a connection has queued.
fn flush(pc: &mut RTCPeerConnection, socket: &UdpSocket, counters: &Counters) {
    while let Some(out) = pc.poll_write() {
        match socket.try_send_to(&out.message, out.transport.peer_addr) {
            Ok(_) => bump(&counters.datagrams_out),
            Err(_) => bump(&counters.send_errors),
        }
    }
}

/// Every m-section of a local SDP with the worker's candidates and `a=end-of-candidates`: rtc
/// writes them into the first section only, and a client that takes each section's transport
/// before applying BUNDLE (aiortc) then has no candidate for the others and never checks.
/// ICE-lite has nothing to trickle, so every description is complete.
pub(crate) fn complete_candidates(sdp: &str) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut cands: Vec<&str> = Vec::new();
    for l in sdp.lines() {
        if l.starts_with("a=candidate:") && !cands.contains(&l) {
            cands.push(l);
        }
    }
    let mut out = String::with_capacity(sdp.len() + 256);
    let mut in_media = false;
    let mut has_cands = false;
    let mut has_end = false;
    let finish = |out: &mut String, in_media: bool, has_cands: bool, has_end: bool| {
        if !in_media {
            return;
        }
        if !has_cands {
            for c in &cands {
                out.push_str(c);
                out.push_str(eol);
            }
        }
        if !has_end {
            out.push_str("a=end-of-candidates");
            out.push_str(eol);
        }
    };
    for l in sdp.lines() {
        if l.starts_with("m=") {
            finish(&mut out, in_media, has_cands, has_end);
            in_media = true;
            has_cands = false;
            has_end = false;
        } else if l.starts_with("a=candidate:") {
            has_cands = true;
        } else if l == "a=end-of-candidates" {
            has_end = true;
        }
        if l.is_empty() {
            continue;
        }
        out.push_str(l);
        out.push_str(eol);
    }
    finish(&mut out, in_media, has_cands, has_end);
    out
}

fn random_token(n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| char::from(A[rand::random_range(0..A.len())]))
        .collect()
}

fn rtc_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Rtc(e.to_string())
}

impl Engine {
    fn new(
        cfg: EngineConfig,
        socket: UdpSocket,
        local: SocketAddr,
        counters: Arc<Counters>,
    ) -> Self {
        Engine {
            socket,
            local,
            cfg,
            counters,
            demux: DemuxTable::new(),
            conns: Vec::new(),
            free: Vec::new(),
            by_participant: HashMap::new(),
            rooms: HashMap::new(),
            timers: BinaryHeap::new(),
            buf: vec![0; RECV_BUF],
            pkts: Vec::new(),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut inject: mpsc::Receiver<SinkMsg>,
    ) {
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        loop {
            // Socket first, until it would block or the budget is spent.
            let mut budget = RECV_BUDGET;
            while budget > 0 {
                match self.socket.try_recv_from(&mut self.buf) {
                    Ok((n, from)) => self.on_datagram(n, from),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ICMP errors for earlier sends (ECONNREFUSED) and the like: skip.
                    Err(_) => {}
                }
                budget -= 1;
            }
            loop {
                match rx.try_recv() {
                    Ok(c) => self.on_command(c),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.shutdown();
                        return;
                    }
                }
            }
            let mut injected = 0;
            while injected < RECV_BUDGET {
                match inject.try_recv() {
                    Ok(m) => self.on_inject(m),
                    Err(_) => break,
                }
                injected += 1;
            }
            self.run_timers();
            if budget == 0 || injected == RECV_BUDGET {
                // More datagrams are waiting; let the runtime breathe, then go on.
                tokio::task::yield_now().await;
                continue;
            }
            let deadline = self
                .timers
                .peek()
                .map(|Reverse((t, _))| tokio::time::Instant::from_std(*t))
                .unwrap_or_else(far);
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                r = self.socket.readable() => {
                    if r.is_err() {
                        tracing::error!("media engine socket failed");
                        self.shutdown();
                        return;
                    }
                }
                c = rx.recv() => match c {
                    Some(c) => self.on_command(c),
                    None => {
                        self.shutdown();
                        return;
                    }
                },
                Some(m) = inject.recv() => self.on_inject(m),
                _ = &mut sleep => {}
            }
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<u32> = self.by_participant.values().copied().collect();
        for id in ids {
            self.remove(id, false);
        }
    }

    fn conn(&mut self, id: u32) -> Option<&mut Conn> {
        self.conns.get_mut(id as usize)?.as_mut()
    }

    // ---- datagrams -------------------------------------------------------------------------

    fn on_datagram(&mut self, n: usize, from: SocketAddr) {
        bump(&self.counters.datagrams_in);
        let route = self.demux.route(&self.buf[..n], from);
        if classify(&self.buf[..n]) == Kind::Stun {
            tracing::trace!(?route, "engine: stun");
        }
        let id = match route {
            Route::Conn(id) => id,
            Route::Junk => return bump(&self.counters.junk),
            Route::BadStun => return bump(&self.counters.bad_stun),
            Route::UnknownUfrag => return bump(&self.counters.stun_unknown_ufrag),
            Route::UnknownSource => return bump(&self.counters.unknown_source),
        };
        let kind = classify(&self.buf[..n]);
        let now = Instant::now();
        let Engine {
            conns,
            buf,
            pkts,
            socket,
            counters,
            local,
            ..
        } = self;
        let Some(conn) = conns.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        if !conn.remote_set {
            // A client checks as soon as it has answered, before its answer reaches us: rtc
            // would drop those checks (no remote credentials yet) and the client would wait
            // out a retransmission. Keep a few and replay them once the answer is applied.
            if kind == Kind::Stun && conn.early.len() < EARLY_CHECKS {
                conn.early.push((buf[..n].to_vec(), from));
            }
            return;
        }
        let tagged = |d: &[u8], from: SocketAddr| TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: *local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(d),
        };
        if kind == Kind::Dtls && !conn.ice_up {
            if conn.early_dtls.len() < EARLY_CHECKS {
                conn.early_dtls.push((buf[..n].to_vec(), from));
            }
            return;
        }
        let _ = conn.pc.handle_read(tagged(&buf[..n], from));
        if kind == Kind::Stun && !conn.connected {
            if is_nomination(&buf[..n]) {
                conn.nomination = Some((buf[..n].to_vec(), from));
            } else if let Some((d, at)) = conn.nomination.take() {
                let _ = conn.pc.handle_read(tagged(&d, at));
            }
        }
        pkts.clear();
        let mut any = false;
        while let Some(m) = conn.pc.poll_media_read() {
            any = true;
            if let RTCMessage::RtpPacket(_, p) = m.message {
                pkts.push(p);
            }
        }
        if kind == Kind::Rtp {
            // RFC 5761: an RTCP packet type (192-223) in the second byte.
            if matches!(buf.get(1), Some(192..=223)) {
                bump(&counters.rtcp_in);
            } else if !any && conn.connected {
                bump(&counters.srtp_failures);
            }
        }
        flush(&mut conn.pc, socket, counters);
        // Events and timers only when something other than media arrived, or while the
        // connection is coming up: SRTP packets of a connected peer change neither.
        if kind != Kind::Rtp || !conn.connected {
            self.after_io(id, now);
        }
        if !self.pkts.is_empty() {
            self.forward(id, now);
        }
    }

    /// Write `self.pkts` (read from `src`) to every other member of `src`'s room that carries
    /// `src`'s producer.
    fn forward(&mut self, src: u32, now: Instant) {
        let Engine {
            conns,
            rooms,
            pkts,
            socket,
            counters,
            cfg,
            ..
        } = self;
        let stats = cfg.stats.as_deref();
        let Some((room, producer)) =
            conns
                .get(src as usize)
                .and_then(Option::as_ref)
                .and_then(|c| {
                    if let Some(h) = &c.hook {
                        for p in pkts.iter() {
                            h(p, now);
                        }
                    }
                    Some((c.room.clone(), c.producer.clone()?))
                })
        else {
            return;
        };
        let Some(members) = rooms.get(&room) else {
            return;
        };
        for p in pkts.iter_mut() {
            p.header.extension = false;
            p.header.extensions.clear();
        }
        for &d in members {
            if d == src {
                continue;
            }
            let Some(dc) = conns.get_mut(d as usize).and_then(Option::as_mut) else {
                continue;
            };
            if !dc.connected {
                continue;
            }
            let Some(slot) = dc.sends.iter_mut().find(|s| {
                s.ready && (Arc::ptr_eq(&s.producer, &producer) || s.producer == producer)
            }) else {
                continue;
            };
            let mut written = 0;
            let mut bytes = 0;
            for p in pkts.iter() {
                let h = slot.rw.rewrite(
                    p.header.ssrc,
                    p.header.sequence_number,
                    p.header.timestamp,
                    now,
                );
                let mut q = p.clone();
                q.header.ssrc = h.ssrc;
                q.header.sequence_number = h.sequence;
                q.header.timestamp = h.timestamp;
                q.header.payload_type = slot.pt;
                let len = q.payload.len() as u64;
                if let Some(mut s) = dc.pc.rtp_sender(slot.sender)
                    && s.write_rtp(now, q).is_ok()
                {
                    bump(&counters.forwarded);
                    written += 1;
                    bytes += len;
                }
            }
            // Each RTP write yields one datagram. `poll_write` runs rtc's whole write pipeline
            // on every call, so take exactly that many instead of polling until `None` (a
            // second, empty pass per destination); anything else queued leaves with the
            // connection's next event, timer or answer, which flush until `None`.
            if let Some(st) = stats {
                MediaStats::add(&st.packets_out, written);
                MediaStats::add(&st.bytes_out, bytes);
            }
            for _ in 0..written {
                let Some(out) = dc.pc.poll_write() else { break };
                match socket.try_send_to(&out.message, out.transport.peer_addr) {
                    Ok(_) => bump(&counters.datagrams_out),
                    Err(_) => bump(&counters.send_errors),
                }
            }
        }
    }

    /// A packet from outside the worker (system audio, a phone leg) for the connections of its
    /// room that carry its producer (or only the one it is meant for).
    fn on_inject(&mut self, m: SinkMsg) {
        let SinkMsg::Room(room, pkt) = m else {
            return;
        };
        let now = Instant::now();
        let Engine {
            conns,
            rooms,
            socket,
            counters,
            cfg,
            ..
        } = self;
        let Some(members) = rooms.get(&room) else {
            return;
        };
        for &d in members {
            let Some(dc) = conns.get_mut(d as usize).and_then(Option::as_mut) else {
                continue;
            };
            if !dc.connected || pkt.only_to.as_ref().is_some_and(|t| *t != dc.participant) {
                continue;
            }
            let Some(slot) = dc
                .sends
                .iter_mut()
                .find(|s| s.ready && s.producer == pkt.producer)
            else {
                continue;
            };
            let h = slot
                .rw
                .rewrite(pkt.ssrc, pkt.sequence, pkt.timestamp, pkt.arrival);
            let q = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: pkt.marker,
                    payload_type: slot.pt,
                    sequence_number: h.sequence,
                    timestamp: h.timestamp,
                    ssrc: h.ssrc,
                    ..Default::default()
                },
                payload: pkt.payload.clone(),
            };
            let ok = dc
                .pc
                .rtp_sender(slot.sender)
                .is_some_and(|mut s| s.write_rtp(now, q).is_ok());
            if ok {
                bump(&counters.injected);
                if let Some(st) = cfg.stats.as_deref() {
                    MediaStats::add(&st.packets_out, 1);
                    MediaStats::add(&st.bytes_out, pkt.payload.len() as u64);
                }
                if let Some(out) = dc.pc.poll_write() {
                    match socket.try_send_to(&out.message, out.transport.peer_addr) {
                        Ok(_) => bump(&counters.datagrams_out),
                        Err(_) => bump(&counters.send_errors),
                    }
                }
            }
        }
    }

    /// After a connection was touched: send, handle its events, re-arm its timer.
    fn after_io(&mut self, id: u32, now: Instant) {
        let Engine {
            conns,
            socket,
            counters,
            timers,
            cfg,
            local,
            ..
        } = self;
        let Some(conn) = conns.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        flush(&mut conn.pc, socket, counters);
        let mut closed = false;
        let mut replay = Vec::new();
        while let Some(ev) = conn.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Connected | RTCIceConnectionState::Completed,
            ) = ev
                && !conn.ice_up
            {
                conn.ice_up = true;
                replay = std::mem::take(&mut conn.early_dtls);
            }
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                match s {
                    RTCPeerConnectionState::Connected if !conn.connected => {
                        conn.connected = true;
                        if !conn.counted_profile {
                            conn.counted_profile = true;
                            count_srtp_profile(&mut conn.pc, cfg.stats.as_deref(), now);
                        }
                        tracing::debug!(key = %conn.key, "engine: connected");
                        let _ = conn.events.send(PeerEvent::Connected);
                    }
                    RTCPeerConnectionState::Disconnected if conn.connected => {
                        conn.connected = false;
                        let _ = conn.events.send(PeerEvent::Disconnected);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        closed = true;
                    }
                    _ => {}
                }
            }
        }
        for (d, from) in replay {
            let _ = conn.pc.handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: *local,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: BytesMut::from(&d[..]),
            });
        }
        // Handling events may queue writes (DTLS flights after the handshake state changes).
        flush(&mut conn.pc, socket, counters);
        if closed {
            tracing::debug!(participant = %conn.participant, "engine: connection closed");
            self.remove(id, true);
            return;
        }
        if let Some(d) = conn.pc.poll_timeout() {
            // Never re-arm in the past: a timeout that stays due would spin the loop.
            let d = d.max(now + Duration::from_millis(1));
            if conn.armed.is_none_or(|a| d < a) {
                conn.armed = Some(d);
                timers.push(Reverse((d, id)));
            }
        }
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conn(id) else { continue };
            if conn.armed != Some(t) {
                continue;
            }
            conn.armed = None;
            let _ = conn.pc.handle_timeout(now);
            self.after_io(id, now);
        }
    }

    // ---- commands --------------------------------------------------------------------------

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Join {
                room,
                participant,
                offer,
                events,
                reply,
            } => {
                let r = self.join(room, participant, offer, events);
                self.reply_then_offer(r, reply);
            }
            Command::Answer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.on_answer(&participant, sdp));
            }
            Command::Publish {
                key,
                room,
                producer,
                offer,
                events,
                hook,
                reply,
            } => {
                let r = self.publish(key, room, producer, offer, events, hook);
                self.reply_then_offer(r, reply);
            }
            Command::Subscribe {
                key,
                room,
                participant,
                producers,
                events,
                reply,
            } => {
                let _ = reply.send(self.subscribe(key, room, participant, producers, events));
            }
            Command::Close { key } => {
                if let Some(&id) = self.by_participant.get(&key) {
                    self.remove(id, false);
                }
            }
            Command::Leave { participant, reply } => {
                let found = match self.by_participant.get(&participant) {
                    Some(&id) => {
                        self.remove(id, false);
                        true
                    }
                    None => false,
                };
                let _ = reply.send(found);
            }
        }
    }

    /// Answer a join or publish, then send the offers it made due (after the answer, so a
    /// client never sees an offer before its own answer).
    fn reply_then_offer(
        &mut self,
        r: Result<(String, Vec<u32>), EngineError>,
        reply: oneshot::Sender<Result<String, EngineError>>,
    ) {
        match r {
            Ok((answer, ids)) => {
                let _ = reply.send(Ok(answer));
                for id in ids {
                    self.offer_if_needed(id);
                }
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn build_pc(&self, ufrag: String, pwd: String) -> Result<RTCPeerConnection, EngineError> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus_codec(),
                    payload_type: OPUS_PT,
                },
                RtpCodecKind::Audio,
            )
            .map_err(rtc_err)?;
        // RFC 6464 levels from publishers (active speaker, `audio_levels`).
        media_engine
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .map_err(rtc_err)?;
        let settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag, pwd)
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            .with_include_loopback_candidate(self.local.ip().is_loopback())
            // ICE-lite sends no checks of its own: liveness is the client's consent checks
            // (RFC 7675: about every 5 s), so no shorter timeouts than these.
            .with_ice_timeouts(
                Some(self.cfg.ice_disconnected.max(LITE_MIN_DISCONNECTED)),
                Some(self.cfg.ice_failed.max(LITE_MIN_FAILED)),
                Some(Duration::from_secs(2)),
            )
            .build();
        RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(Registry::new())
            .build(Instant::now())
            .map_err(rtc_err)
    }

    /// Add a send-only transceiver for `producer`'s audio to `conn`.
    fn add_send(conn: &mut Conn, producer: ParticipantId) -> Result<(), EngineError> {
        let ssrc: u32 = rand::random();
        // Stream id = the producer's id, as the signaling's track list and clients expect.
        let track = MediaStreamTrack::new(
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
        );
        let tid = conn
            .pc
            .add_transceiver_from_track(
                track,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .map_err(rtc_err)?;
        let sender = conn
            .pc
            .rtp_transceiver(tid)
            .and_then(|t| t.sender())
            .ok_or_else(|| EngineError::Rtc("new transceiver has no sender".into()))?;
        conn.sends.push(SendSlot {
            producer,
            sender,
            rw: Rewriter::new(ssrc, OPUS_CLOCK_RATE),
            pt: OPUS_PT,
            ready: false,
            offered: false,
        });
        conn.dirty = true;
        Ok(())
    }

    /// A new connection with a fresh ICE ufrag and the worker's host candidate; with `offer`,
    /// answered (returns the answer).
    fn new_pc(
        &self,
        offer: Option<String>,
    ) -> Result<(RTCPeerConnection, String, Option<String>), EngineError> {
        let ufrag = loop {
            let u = random_token(16);
            if !self.demux.has_ufrag(&u) {
                break u;
            }
        };
        let mut pc = self.build_pc(ufrag.clone(), random_token(32))?;
        let now = Instant::now();
        if let Some(offer) = offer {
            let offer = RTCSessionDescription::offer(offer)
                .map_err(|e| EngineError::BadSdp(e.to_string()))?;
            pc.set_remote_description(now, offer)
                .map_err(|e| EngineError::BadSdp(e.to_string()))?;
        }
        let cand = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.local.ip().to_string(),
                port: self.local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(rtc_err)?;
        let init = RTCIceCandidate::from(&cand).to_json().map_err(rtc_err)?;
        pc.add_local_candidate(init).map_err(rtc_err)?;
        if pc.remote_description().is_none() {
            return Ok((pc, ufrag, None));
        }
        let answer = pc.create_answer(None).map_err(rtc_err)?;
        pc.set_local_description(now, answer).map_err(rtc_err)?;
        let answer = pc
            .local_description()
            .map(|d| complete_candidates(&d.sdp))
            .ok_or_else(|| EngineError::Rtc("no local description".into()))?;
        Ok((pc, ufrag, Some(answer)))
    }

    /// Put a new connection in its slot, the demux and its room; returns its id.
    fn insert(&mut self, conn: Conn, ufrag: &str) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
        };
        self.by_participant.insert(conn.key.clone(), id);
        self.rooms.entry(conn.room.clone()).or_default().push(id);
        self.conns[id as usize] = Some(conn);
        self.demux.insert_ufrag(ufrag, id);
        id
    }

    /// Add `producer` to every auto-offering member of `room`; returns those changed.
    fn add_producer_to_auto(
        &mut self,
        room: &str,
        except: u32,
        producer: &ParticipantId,
    ) -> Result<Vec<u32>, EngineError> {
        let members = self.rooms.get(room).cloned().unwrap_or_default();
        let mut touched = Vec::new();
        for m in members {
            if m == except {
                continue;
            }
            let Some(mc) = self.conns.get_mut(m as usize).and_then(Option::as_mut) else {
                continue;
            };
            if mc.auto_offer && mc.sends.iter().all(|s| s.producer != *producer) {
                Self::add_send(mc, producer.clone())?;
                touched.push(m);
            }
        }
        Ok(touched)
    }

    /// Returns the answer and the connections that may need an offer.
    fn join(
        &mut self,
        room: String,
        participant: String,
        offer: String,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<(String, Vec<u32>), EngineError> {
        if self.by_participant.contains_key(&participant) {
            return Err(EngineError::Duplicate(participant));
        }
        let (pc, ufrag, answer) = self.new_pc(Some(offer))?;
        let answer = answer.ok_or_else(|| EngineError::Rtc("no answer".into()))?;
        let room: Arc<str> = Arc::from(room);
        let pid: ParticipantId = Arc::from(participant.as_str());
        let mut conn = Conn {
            producer: Some(pid.clone()),
            hook: None,
            auto_offer: true,
            remote_set: true,
            ..Conn::new(pc, participant, pid.clone(), room.clone(), events)
        };
        // Everyone already publishing in the room.
        for m in self.rooms.get(&room).cloned().unwrap_or_default() {
            if let Some(p) = self
                .conns
                .get(m as usize)
                .and_then(Option::as_ref)
                .and_then(|c| c.producer.clone())
            {
                Self::add_send(&mut conn, p)?;
            }
        }
        let id = self.insert(conn, &ufrag);
        let mut touched = self.add_producer_to_auto(&room, id, &pid)?;
        touched.push(id);
        self.after_io(id, Instant::now());
        Ok((answer, touched))
    }

    /// A publishing connection; replaces one with the same key. Returns the answer and the
    /// auto-offering connections that may need an offer.
    fn publish(
        &mut self,
        key: String,
        room: Arc<str>,
        producer: ParticipantId,
        offer: String,
        events: mpsc::UnboundedSender<PeerEvent>,
        hook: Option<PacketHook>,
    ) -> Result<(String, Vec<u32>), EngineError> {
        if let Some(&old) = self.by_participant.get(&key) {
            self.remove(old, false);
        }
        let (pc, ufrag, answer) = self.new_pc(Some(offer))?;
        let answer = answer.ok_or_else(|| EngineError::Rtc("no answer".into()))?;
        let conn = Conn {
            producer: Some(producer.clone()),
            hook,
            auto_offer: false,
            remote_set: true,
            ..Conn::new(pc, key, producer.clone(), room.clone(), events)
        };
        let id = self.insert(conn, &ufrag);
        let touched = self.add_producer_to_auto(&room, id, &producer)?;
        self.after_io(id, Instant::now());
        Ok((answer, touched))
    }

    /// Create or update a subscribing connection so that it carries exactly `producers`, and
    /// make an offer.
    fn subscribe(
        &mut self,
        key: String,
        room: Arc<str>,
        participant: ParticipantId,
        producers: Vec<ParticipantId>,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<String, EngineError> {
        let id = match self.by_participant.get(&key) {
            Some(&id) => id,
            None => {
                let (pc, ufrag, _) = self.new_pc(None)?;
                // Sends only; the remote description comes with the client's answer.
                let conn = Conn::new(pc, key, participant, room, events);
                self.insert(conn, &ufrag)
            }
        };
        let now = Instant::now();
        let conn = self
            .conn(id)
            .ok_or_else(|| EngineError::Rtc("connection vanished".into()))?;
        let mut i = 0;
        while i < conn.sends.len() {
            if producers.contains(&conn.sends[i].producer) {
                i += 1;
                continue;
            }
            let slot = conn.sends.remove(i);
            conn.pc.remove_track(slot.sender).map_err(rtc_err)?;
        }
        for p in producers {
            if conn.sends.iter().all(|s| s.producer != p) {
                Self::add_send(conn, p)?;
            }
        }
        let offer = conn.pc.create_offer(None).map_err(rtc_err)?;
        conn.pc.set_local_description(now, offer).map_err(rtc_err)?;
        let sdp = conn
            .pc
            .local_description()
            .map(|d| complete_candidates(&d.sdp))
            .ok_or_else(|| EngineError::Rtc("no local description".into()))?;
        conn.dirty = false;
        conn.awaiting_answer = true;
        for s in &mut conn.sends {
            s.offered = true;
        }
        tracing::debug!(key = %conn.key, tracks = conn.sends.len(), "engine: subscribe offer");
        tracing::trace!(%sdp, "engine: subscribe offer sdp");
        self.after_io(id, now);
        Ok(sdp)
    }

    /// Send a server offer to `id` if its send set changed and no offer is outstanding.
    fn offer_if_needed(&mut self, id: u32) {
        let now = Instant::now();
        let Some(conn) = self.conn(id) else { return };
        if !conn.auto_offer || !conn.dirty || conn.awaiting_answer {
            return;
        }
        let r = conn
            .pc
            .create_offer(None)
            .and_then(|o| conn.pc.set_local_description(now, o));
        let sdp = match r {
            Ok(()) => conn
                .pc
                .local_description()
                .map(|d| complete_candidates(&d.sdp)),
            Err(e) => {
                tracing::warn!(participant = %conn.participant, error = %e, "engine: server offer failed");
                None
            }
        };
        let Some(sdp) = sdp else { return };
        conn.dirty = false;
        conn.awaiting_answer = true;
        for s in &mut conn.sends {
            s.offered = true;
        }
        let _ = conn.events.send(PeerEvent::Offer(sdp));
        self.after_io(id, now);
    }

    fn on_answer(&mut self, participant: &str, sdp: String) -> Result<(), EngineError> {
        let id = *self
            .by_participant
            .get(participant)
            .ok_or_else(|| EngineError::NoParticipant(participant.to_owned()))?;
        let now = Instant::now();
        let local = self.local;
        let conn = self
            .conn(id)
            .ok_or_else(|| EngineError::NoParticipant(participant.to_owned()))?;
        if !conn.awaiting_answer {
            return Err(EngineError::NoOfferOutstanding(participant.to_owned()));
        }
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| EngineError::BadSdp(e.to_string()))?;
        conn.pc
            .set_remote_description(now, answer)
            .map_err(|e| EngineError::BadSdp(e.to_string()))?;
        tracing::debug!(key = %conn.key, "engine: answer applied");
        conn.awaiting_answer = false;
        conn.remote_set = true;
        for (d, from) in std::mem::take(&mut conn.early) {
            let _ = conn.pc.handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: local,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: BytesMut::from(&d[..]),
            });
        }
        for i in 0..conn.sends.len() {
            if !conn.sends[i].offered || conn.sends[i].ready {
                continue;
            }
            let sender = conn.sends[i].sender;
            let pt = conn
                .pc
                .rtp_sender(sender)
                .and_then(|mut s| {
                    s.get_parameters()
                        .rtp_parameters
                        .codecs
                        .first()
                        .map(|c| c.payload_type)
                })
                .unwrap_or(OPUS_PT);
            let slot = &mut conn.sends[i];
            slot.pt = pt;
            slot.ready = true;
        }
        self.after_io(id, now);
        self.offer_if_needed(id);
        Ok(())
    }

    /// Remove a connection from everything; `notify` tells its signaling.
    fn remove(&mut self, id: u32, notify: bool) {
        let Some(mut conn) = self.conns.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(id);
        self.demux.remove(id);
        self.by_participant.remove(&conn.key);
        let _ = conn.pc.close();
        flush(&mut conn.pc, &self.socket, &self.counters);
        if notify {
            let _ = conn.events.send(PeerEvent::Closed);
        }
        let members = match self.rooms.get_mut(&conn.room) {
            Some(m) => {
                m.retain(|&x| x != id);
                if m.is_empty() {
                    self.rooms.remove(&conn.room);
                    Vec::new()
                } else {
                    m.clone()
                }
            }
            None => Vec::new(),
        };
        let Some(gone) = conn.producer.clone() else {
            return;
        };
        for m in members {
            let Some(mc) = self.conn(m) else { continue };
            if !mc.auto_offer {
                // Its owner renegotiates (`subscribe`) when the room tells it.
                continue;
            }
            if let Some(i) = mc.sends.iter().position(|s| s.producer == gone) {
                let slot = mc.sends.remove(i);
                if mc.pc.remove_track(slot.sender).is_ok() {
                    mc.dirty = true;
                }
            }
            self.offer_if_needed(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::complete_candidates;

    #[test]
    fn every_section_gets_the_candidates_and_an_end() {
        let sdp = "v=0\r\na=group:BUNDLE 0 1\r\nm=audio 9 X 111\r\na=mid:0\r\n\
            a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\nm=audio 9 X 111\r\na=mid:1\r\n";
        let out = complete_candidates(sdp);
        let sections: Vec<&str> = out.split("m=audio").skip(1).collect();
        assert_eq!(sections.len(), 2);
        for s in sections {
            assert_eq!(
                s.matches("a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\n")
                    .count(),
                1,
                "{s}"
            );
            assert_eq!(s.matches("a=end-of-candidates\r\n").count(), 1, "{s}");
        }
        assert!(out.starts_with("v=0\r\na=group:BUNDLE 0 1\r\n"));
    }
}
