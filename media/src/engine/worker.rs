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
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::demux::{DemuxTable, Kind, Route, classify};
use crate::peer::{OPUS_PT, opus_codec};

/// Largest datagram read.
const RECV_BUF: usize = 2048;
/// Requested socket send and receive buffer size.
const SOCKET_BUFFER: usize = 4 << 20;
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
}

impl EngineConfig {
    pub fn local(bind: SocketAddr) -> Self {
        EngineConfig {
            bind,
            announce_ip: None,
            ice_disconnected: Duration::from_secs(5),
            ice_failed: Duration::from_secs(15),
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
    /// A server offer (the room changed); reply with [`Worker::answer`].
    Offer(String),
    /// ICE and DTLS are up.
    Connected,
    /// The connection failed or closed and the participant was removed from its room.
    Closed,
}

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
}

/// Handle to a worker thread. Dropping it stops the thread (connections are closed first).
pub struct Worker {
    tx: Option<mpsc::UnboundedSender<Command>>,
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
                        Engine::new(cfg, socket, local_addr, counters).run(rx).await;
                    });
                })?
        };
        // The thread id is known once the thread runs.
        let _ = started_rx.recv();
        Ok(Worker {
            tx: Some(tx),
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
    producer: u32,
    sender: RTCRtpSenderId,
    ssrc: u32,
    pt: u8,
    /// In an offer the client has answered: packets may flow.
    ready: bool,
    /// In the offer now outstanding.
    offered: bool,
}

struct Conn {
    pc: RTCPeerConnection,
    participant: String,
    room: String,
    events: mpsc::UnboundedSender<PeerEvent>,
    sends: Vec<SendSlot>,
    connected: bool,
    awaiting_answer: bool,
    /// The send set changed since the last offer.
    dirty: bool,
    /// The earliest timer entry in the heap for this connection.
    armed: Option<Instant>,
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
    rooms: HashMap<String, Vec<u32>>,
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

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
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
            self.run_timers();
            if budget == 0 {
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
        let id = match self.demux.route(&self.buf[..n], from) {
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
        let _ = conn.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: *local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(&buf[..n]),
        });
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

    /// Write `self.pkts` (read from `src`) to every other member of `src`'s room.
    fn forward(&mut self, src: u32, now: Instant) {
        let Engine {
            conns,
            rooms,
            pkts,
            socket,
            counters,
            ..
        } = self;
        let Some(room) = conns
            .get(src as usize)
            .and_then(Option::as_ref)
            .map(|c| &c.room)
        else {
            return;
        };
        let Some(members) = rooms.get(room) else {
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
            let Some(slot) = dc.sends.iter().find(|s| s.producer == src && s.ready) else {
                continue;
            };
            let (sender, ssrc, pt) = (slot.sender, slot.ssrc, slot.pt);
            let mut written = 0;
            for p in pkts.iter() {
                let mut q = p.clone();
                q.header.ssrc = ssrc;
                q.header.payload_type = pt;
                if let Some(mut s) = dc.pc.rtp_sender(sender)
                    && s.write_rtp(now, q).is_ok()
                {
                    bump(&counters.forwarded);
                    written += 1;
                }
            }
            // Each RTP write yields one datagram. `poll_write` runs rtc's whole write pipeline
            // on every call, so take exactly that many instead of polling until `None` (a
            // second, empty pass per destination); anything else queued leaves with the
            // connection's next event, timer or answer, which flush until `None`.
            for _ in 0..written {
                let Some(out) = dc.pc.poll_write() else { break };
                match socket.try_send_to(&out.message, out.transport.peer_addr) {
                    Ok(_) => bump(&counters.datagrams_out),
                    Err(_) => bump(&counters.send_errors),
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
            ..
        } = self;
        let Some(conn) = conns.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        flush(&mut conn.pc, socket, counters);
        let mut closed = false;
        while let Some(ev) = conn.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                match s {
                    RTCPeerConnectionState::Connected if !conn.connected => {
                        conn.connected = true;
                        let _ = conn.events.send(PeerEvent::Connected);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        closed = true;
                    }
                    _ => {}
                }
            }
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
                let ids = match r {
                    Ok((answer, ids)) => {
                        let _ = reply.send(Ok(answer));
                        ids
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                for id in ids {
                    self.offer_if_needed(id);
                }
            }
            Command::Answer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.on_answer(&participant, sdp));
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
            .with_ice_timeouts(
                Some(self.cfg.ice_disconnected),
                Some(self.cfg.ice_failed),
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
    fn add_send(conn: &mut Conn, producer: u32, producer_name: &str) -> Result<(), EngineError> {
        let ssrc: u32 = rand::random();
        let track = MediaStreamTrack::new(
            producer_name.to_owned(),
            format!("{producer_name}-audio"),
            "audio".to_owned(),
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
            ssrc,
            pt: OPUS_PT,
            ready: false,
            offered: false,
        });
        conn.dirty = true;
        Ok(())
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
        let ufrag = loop {
            let u = random_token(16);
            if !self.demux.has_ufrag(&u) {
                break u;
            }
        };
        let mut pc = self.build_pc(ufrag.clone(), random_token(32))?;
        let now = Instant::now();
        let offer =
            RTCSessionDescription::offer(offer).map_err(|e| EngineError::BadSdp(e.to_string()))?;
        pc.set_remote_description(now, offer)
            .map_err(|e| EngineError::BadSdp(e.to_string()))?;
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
        let answer = pc.create_answer(None).map_err(rtc_err)?;
        pc.set_local_description(now, answer).map_err(rtc_err)?;
        let answer = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| EngineError::Rtc("no local description".into()))?;

        let mut conn = Conn {
            pc,
            participant: participant.clone(),
            room: room.clone(),
            events,
            sends: Vec::new(),
            connected: false,
            awaiting_answer: false,
            dirty: false,
            armed: None,
        };
        let members = self.rooms.get(&room).cloned().unwrap_or_default();
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
        };
        let mut touched = Vec::with_capacity(members.len() + 1);
        for &m in &members {
            let Some(mc) = self.conns.get_mut(m as usize).and_then(Option::as_mut) else {
                continue;
            };
            let m_name = mc.participant.clone();
            Self::add_send(mc, id, &participant)?;
            touched.push(m);
            Self::add_send(&mut conn, m, &m_name)?;
        }
        touched.push(id);
        self.conns[id as usize] = Some(conn);
        self.demux.insert_ufrag(&ufrag, id);
        self.by_participant.insert(participant, id);
        self.rooms.entry(room).or_default().push(id);
        self.after_io(id, now);
        Ok((answer, touched))
    }

    /// Send a server offer to `id` if its send set changed and no offer is outstanding.
    fn offer_if_needed(&mut self, id: u32) {
        let now = Instant::now();
        let Some(conn) = self.conn(id) else { return };
        if !conn.dirty || conn.awaiting_answer {
            return;
        }
        let r = conn
            .pc
            .create_offer(None)
            .and_then(|o| conn.pc.set_local_description(now, o));
        let sdp = match r {
            Ok(()) => conn.pc.local_description().map(|d| d.sdp),
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
        conn.awaiting_answer = false;
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
        self.by_participant.remove(&conn.participant);
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
        for m in members {
            let Some(mc) = self.conn(m) else { continue };
            if let Some(i) = mc.sends.iter().position(|s| s.producer == id) {
                let slot = mc.sends.remove(i);
                if mc.pc.remove_track(slot.sender).is_ok() {
                    mc.dirty = true;
                }
            }
            self.offer_if_needed(m);
        }
    }
}
