//! A phone leg's media: plain RTP on one UDP socket, bridged to its room through a
//! [`LegPort`](crate::LegPort).
//!
//! - **Uplink** (phone to room): RTP is latched (symmetric RTP), telephone-events become
//!   digits ([`DtmfReceiver`]), audio goes through the [`JitterBuffer`] and is played out at
//!   the sender's own packet time (sipp sends 30 ms), decoded at the leg's rate, and published
//!   as 20 ms Opus frames (an Opus leg's payloads are forwarded as they are).
//! - **Downlink** (room to phone): each other producer's Opus is decoded at the leg's rate
//!   into its own queue; every packet time the queues are mixed (mix-minus falls out of the
//!   room's routing, which never sends a leg its own packets), encoded in the leg's codec and
//!   sent, silence included, so the PBX's RTP timeout never fires.
//!
//! One tokio task per leg runs both directions, woken when a packet arrives or when the engine
//! says the next frame is due. Nothing here knows SIP: the
//! caller negotiates and passes [`LegParams`], and hears back [`LegSignal`]s.

pub mod rtp;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::LegPort;
use crate::codec::{WireCodec, WireKind};
use crate::dtmf::{Digit, DtmfReceiver, TelephoneEvent, event_of};
use crate::forward::SinkMsg;
use crate::jitter::{JitterBuffer, Playout};
use crate::room::{LeaveReason, ParticipantId};
use crate::sfu::ParticipantEvent;

/// What the signaling side negotiated for a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegParams {
    pub codec: WireKind,
    /// The codec's payload type on this leg.
    pub pt: u8,
    /// telephone-event's payload type, if negotiated.
    pub dtmf_pt: Option<u8>,
    /// Packet time we send at (Opus legs always send 20 ms).
    pub ptime_ms: u32,
    /// Where to send until the peer's own RTP is latched.
    pub remote: Option<SocketAddr>,
    /// Whether we send (false while the peer holds the call).
    pub send: bool,
    /// Whether the peer sends (false while it is on hold): the RTP timeout runs only then.
    pub receive: bool,
    /// Hang up after this long without RTP from the peer.
    pub rtp_timeout: Duration,
    /// libopus complexity (0-10) for the uplink's Opus encoding.
    pub opus_complexity: i32,
    /// SDES-SRTP (RTP/SAVP): both directions' keys; plain RTP when `None`.
    pub srtp: Option<SrtpKeys>,
}

/// The master keys of an SDES-SRTP leg (AES-128 counter mode, HMAC-SHA1).
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    /// `AES_CM_128_HMAC_SHA1_32` (else `_80`).
    pub tag_32: bool,
    /// What we send with: 16 bytes of key, then 14 of salt (our `a=crypto`).
    pub local: Vec<u8>,
    /// What the peer sends with (its `a=crypto`).
    pub remote: Vec<u8>,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SrtpKeys")
            .field("tag_32", &self.tag_32)
            .finish_non_exhaustive()
    }
}

/// The sending and receiving SRTP contexts of a leg.
struct Srtp {
    tx: rtc::srtp::context::Context,
    rx: rtc::srtp::context::Context,
}

impl Srtp {
    fn new(k: &SrtpKeys) -> Result<Srtp, String> {
        use rtc::srtp::protection_profile::ProtectionProfile;
        let profile = if k.tag_32 {
            ProtectionProfile::Aes128CmHmacSha1_32
        } else {
            ProtectionProfile::Aes128CmHmacSha1_80
        };
        let ctx = |m: &[u8]| {
            if m.len() != 30 {
                return Err(format!("an SRTP master key is 30 bytes, not {}", m.len()));
            }
            rtc::srtp::context::Context::new(
                &m[..16],
                &m[16..],
                profile,
                None,
                None,
                &rtc::crypto::providers::RingCrypto,
            )
            .map_err(|e| e.to_string())
        };
        Ok(Srtp {
            tx: ctx(&k.local)?,
            rx: ctx(&k.remote)?,
        })
    }
}

/// Orders for a running leg.
#[derive(Debug)]
pub enum LegCommand {
    /// A re-INVITE or UPDATE changed the session (hold, a new address or codec).
    Update(LegParams),
    /// Send a digit to the phone (RFC 4733), as the room's keypad asks.
    SendDigit(char),
    /// Play these 20 ms Opus frames (48 kHz) to this leg only, mixed into what it hears (the
    /// "press 1" consent prompt).
    Play(Arc<Vec<Bytes>>),
    /// Leave the room and stop.
    Stop(LeaveReason),
}

/// What a leg reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegSignal {
    /// The phone pressed a key (RFC 4733).
    Dtmf(char),
    /// No RTP for `rtp_timeout`: the leg is ending.
    RtpTimeout,
    /// The leg left its room (after `Stop`, a timeout, or the room ending it).
    Ended(LeaveReason),
}

/// Counters over every leg, for metrics.
#[derive(Debug, Default)]
pub struct PstnStats {
    pub legs: AtomicU64,
    pub rtp_in: AtomicU64,
    pub rtp_out: AtomicU64,
    /// Datagrams that are not RTP, or carry a payload type not negotiated.
    pub rtp_invalid: AtomicU64,
    /// RTP from an address other than the latched one.
    pub rtp_foreign: AtomicU64,
    pub rtcp_in: AtomicU64,
    pub jitter_missing: AtomicU64,
    pub jitter_late: AtomicU64,
    pub decode_errors: AtomicU64,
    pub downlink_overflow: AtomicU64,
    pub send_errors: AtomicU64,
    pub dtmf_in: AtomicU64,
    pub dtmf_out: AtomicU64,
    pub rtp_timeouts: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Where a leg's RTP goes: a plain UDP socket (bound, not connected: the peer need not
/// listen), or a WebRTC peer connection (ICE + DTLS-SRTP, for WebRTC media over SIP).
pub enum LegIo {
    Udp(UdpSocket),
    WebRtc(crate::sfu::WebRtcMedia),
}

/// The source address WebRTC packets appear to come from (the peer connection owns the real
/// one; latching has nothing to decide).
const WEBRTC_SOURCE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl LegIo {
    async fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        match self {
            LegIo::Udp(s) => s.recv_from(buf).await.ok(),
            LegIo::WebRtc(w) => match w.incoming.recv().await {
                Some(v) => {
                    let n = v.len().min(buf.len());
                    buf[..n].copy_from_slice(&v[..n]);
                    Some((n, WEBRTC_SOURCE))
                }
                // The peer connection is gone: no more media (the RTP timeout ends the leg).
                None => std::future::pending().await,
            },
        }
    }

    async fn send(&self, pkt: &[u8], dest: SocketAddr) -> bool {
        match self {
            LegIo::Udp(s) => s.try_send_to(pkt, dest).is_ok(),
            LegIo::WebRtc(w) => w.send(pkt).await,
        }
    }

    async fn close(&self) {
        if let LegIo::WebRtc(w) = self {
            w.close().await;
        }
    }
}

/// A running leg: send it commands, read its signals.
pub struct LegHandle {
    pub commands: mpsc::UnboundedSender<LegCommand>,
    pub signals: mpsc::UnboundedReceiver<LegSignal>,
    pub participant: ParticipantId,
    pub task: tokio::task::JoinHandle<()>,
}

/// Start a leg's media on `io`.
pub fn start(
    mut port: LegPort,
    io: LegIo,
    params: LegParams,
    stats: Arc<PstnStats>,
) -> Result<LegHandle, String> {
    let (ctx, crx) = mpsc::unbounded_channel();
    let (stx, srx) = mpsc::unbounded_channel();
    let participant: ParticipantId = Arc::from(port.id());
    let downlink = port
        .take_downlink()
        .ok_or_else(|| "the leg's downlink was taken".to_string())?;
    let mut engine = Engine::new(params, stats.clone())?;
    if matches!(io, LegIo::WebRtc(_)) {
        // DTLS-SRTP carries the packets to the right place: send from the start.
        engine.dest = Some(WEBRTC_SOURCE);
    }
    add(&stats.legs, 1);
    let task = tokio::spawn(run(port, io, downlink, engine, crx, stx, stats));
    Ok(LegHandle {
        commands: ctx,
        signals: srx,
        participant,
        task,
    })
}

/// One other producer as this leg hears it.
struct Source {
    dec: opus::Decoder,
    fifo: VecDeque<i16>,
    primed: bool,
    last: Instant,
}

/// A leg's DSP and RTP state (no IO: the task feeds it and sends what it returns).
struct Engine {
    p: LegParams,
    stats: Arc<PstnStats>,
    rate: usize,
    wire: WireCodec,
    /// The uplink's Opus encoder at the leg's rate (not used by Opus legs).
    up_enc: Option<opus::Encoder>,
    /// An Opus leg's uplink is forwarded as it is; this narrowband decoder only measures its
    /// level for the room's meters and active speaker.
    level_dec: Option<opus::Decoder>,
    srtp: Option<Srtp>,
    jitter: JitterBuffer<Bytes>,
    dtmf_rx: DtmfReceiver,
    up_next: Option<Instant>,
    up_frame: usize,
    up_pcm: Vec<i16>,
    up_ts: u32,
    sources: HashMap<(ParticipantId, u32), Source>,
    down_next: Option<Instant>,
    down_ssrc: u32,
    down_seq: u16,
    down_ts: u32,
    dtmf_tx: VecDeque<[u8; 4]>,
    /// A prompt for this leg only: frames left and when the next is due.
    prompt: VecDeque<Bytes>,
    prompt_next: Option<Instant>,
    dtmf_ts: u32,
    dtmf_marker: bool,
    dest: Option<SocketAddr>,
    latched: Option<(SocketAddr, u32, Instant)>,
    last_rx: Instant,
    scratch: Vec<i16>,
    /// The downlink mix being built, and its 16-bit result (kept to reuse their memory).
    acc: Vec<i32>,
    pcm: Vec<i16>,
    wire_buf: Vec<u8>,
    opus_buf: Vec<u8>,
}

/// What the engine wants sent or said after one input.
#[derive(Default)]
struct Out {
    packets: Vec<(Vec<u8>, SocketAddr)>,
    publish: Vec<(Bytes, u32, Option<u8>)>,
    signals: Vec<LegSignal>,
}

fn level_of(pcm: &[i16]) -> u8 {
    if pcm.is_empty() {
        return 127;
    }
    let e: f64 = pcm.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / pcm.len() as f64;
    let rms = e.sqrt() / 32_768.0;
    if rms <= 0.0 {
        return 127;
    }
    (-20.0 * rms.log10()).clamp(0.0, 127.0) as u8
}

impl Engine {
    fn new(p: LegParams, stats: Arc<PstnStats>) -> Result<Engine, String> {
        let rate = p.codec.sample_rate() as usize;
        let up_enc = if p.codec == WireKind::Opus {
            None
        } else {
            let mut e =
                opus::Encoder::new(rate as u32, opus::Channels::Mono, opus::Application::Voip)
                    .map_err(|e| format!("opus encoder: {e}"))?;
            let _ = e.set_bitrate(opus::Bitrate::Bits(if rate <= 8_000 {
                20_000
            } else {
                28_000
            }));
            let _ = e.set_complexity(p.opus_complexity.clamp(0, 10));
            Some(e)
        };
        let now = Instant::now();
        let srtp = p.srtp.as_ref().map(Srtp::new).transpose()?;
        let level_dec = (p.codec == WireKind::Opus)
            .then(|| opus::Decoder::new(8_000, opus::Channels::Mono).ok())
            .flatten();
        Ok(Engine {
            level_dec,
            srtp,
            wire: WireCodec::new(p.codec)?,
            dest: p.remote,
            p,
            stats,
            rate,
            up_enc,
            jitter: JitterBuffer::new(2, 50),
            dtmf_rx: DtmfReceiver::new(),
            up_next: None,
            up_frame: rate / 50,
            up_pcm: Vec::new(),
            up_ts: rand::random(),
            sources: HashMap::new(),
            down_next: None,
            down_ssrc: rand::random(),
            down_seq: rand::random(),
            down_ts: rand::random(),
            dtmf_tx: VecDeque::new(),
            prompt: VecDeque::new(),
            prompt_next: None,
            dtmf_ts: 0,
            dtmf_marker: false,
            latched: None,
            last_rx: now,
            scratch: Vec::new(),
            acc: Vec::new(),
            pcm: Vec::new(),
            wire_buf: Vec::new(),
            opus_buf: vec![0; 1_500],
        })
    }

    fn send_ptime(&self) -> u32 {
        if self.p.codec == WireKind::Opus {
            20
        } else {
            self.p.ptime_ms
        }
    }

    fn update(&mut self, p: LegParams) {
        if p.codec != self.p.codec
            && let Ok(w) = WireCodec::new(p.codec)
        {
            self.wire = w;
            self.level_dec = (p.codec == WireKind::Opus)
                .then(|| opus::Decoder::new(8_000, opus::Channels::Mono).ok())
                .flatten();
        }
        if p.remote != self.p.remote {
            self.dest = p.remote;
            self.latched = None;
        }
        if p.receive && !self.p.receive {
            self.last_rx = Instant::now();
        }
        if p.srtp != self.p.srtp {
            match p.srtp.as_ref().map(Srtp::new).transpose() {
                Ok(s) => self.srtp = s,
                Err(_) => add(&self.stats.decode_errors, 1),
            }
        }
        self.p = p;
    }

    /// One datagram from `from`.
    fn on_datagram(&mut self, buf: &[u8], from: SocketAddr, now: Instant, out: &mut Out) {
        if rtp::is_rtcp(buf) {
            add(&self.stats.rtcp_in, 1);
            return;
        }
        let plain;
        let buf = match self.srtp.as_mut() {
            Some(s) => match s.rx.decrypt_rtp(buf) {
                Ok(b) => {
                    plain = b;
                    &plain[..]
                }
                // Forged, replayed or not ours: dropped and counted.
                Err(_) => {
                    add(&self.stats.rtp_invalid, 1);
                    return;
                }
            },
            None => buf,
        };
        let Some(pkt) = rtp::parse(buf) else {
            add(&self.stats.rtp_invalid, 1);
            return;
        };
        let is_dtmf = Some(pkt.pt) == self.p.dtmf_pt;
        if pkt.pt != self.p.pt && !is_dtmf {
            add(&self.stats.rtp_invalid, 1);
            return;
        }
        // Symmetric RTP: answer where the peer's RTP comes from. Another address takes over
        // only with a new SSRC or after 2 s of silence from the latched one.
        match self.latched {
            Some((addr, ssrc, last)) if addr != from => {
                if ssrc == pkt.ssrc && now.duration_since(last) < Duration::from_secs(2) {
                    add(&self.stats.rtp_foreign, 1);
                    return;
                }
                self.latched = Some((from, pkt.ssrc, now));
                self.dest = Some(from);
            }
            Some((addr, ssrc, _)) => {
                // DTMF may use its own SSRC (sipp's pcaps do): keep the audio's.
                let ssrc = if is_dtmf { ssrc } else { pkt.ssrc };
                self.latched = Some((addr, ssrc, now));
            }
            None => {
                self.latched = Some((from, pkt.ssrc, now));
                self.dest = Some(from);
            }
        }
        add(&self.stats.rtp_in, 1);
        self.last_rx = now;
        if is_dtmf {
            match self.dtmf_rx.on_packet(pkt.ssrc, pkt.timestamp, pkt.payload) {
                Ok(Some(Digit(d))) => {
                    add(&self.stats.dtmf_in, 1);
                    out.signals.push(LegSignal::Dtmf(d));
                }
                Ok(None) => {}
                Err(_) => add(&self.stats.rtp_invalid, 1),
            }
            return;
        }
        if pkt.payload.is_empty() {
            return;
        }
        if let crate::jitter::Push::Late = self
            .jitter
            .push(pkt.sequence, Bytes::copy_from_slice(pkt.payload))
        {
            add(&self.stats.jitter_late, 1);
        }
        if self.up_next.is_none() {
            self.up_next = Some(now);
        }
    }

    /// Samples (at the leg's rate) in one uplink payload.
    fn frame_samples(&self, payload: &[u8]) -> usize {
        match self.p.codec {
            WireKind::Pcmu | WireKind::Pcma => payload.len(),
            WireKind::G722 => payload.len() * 2,
            WireKind::Opus => opus::packet::get_nb_samples(payload, 48_000).unwrap_or(960),
        }
    }

    /// Play out the uplink up to `now`.
    fn uplink(&mut self, now: Instant, out: &mut Out) {
        let Some(mut due) = self.up_next else {
            return;
        };
        let ten_ms = self.rate / 100;
        while due <= now {
            let samples = match self.jitter.pop() {
                Playout::Frame(payload) => {
                    let n = self.frame_samples(&payload);
                    if self.p.codec == WireKind::Opus {
                        let level = self.level_dec.as_mut().and_then(|d| {
                            self.scratch.resize(960, 0);
                            d.decode(&payload, &mut self.scratch, false)
                                .ok()
                                .map(|k| level_of(&self.scratch[..k]))
                        });
                        out.publish.push((payload, self.up_ts, level));
                        self.up_ts = self.up_ts.wrapping_add(n as u32);
                    } else {
                        match self.wire.decode(&payload, &mut self.up_pcm) {
                            Ok(_) => {}
                            Err(_) => add(&self.stats.decode_errors, 1),
                        }
                    }
                    self.up_frame = n.max(1);
                    n
                }
                Playout::Missing => {
                    add(&self.stats.jitter_missing, 1);
                    let n = self.up_frame;
                    if self.p.codec == WireKind::Opus {
                        self.up_ts = self.up_ts.wrapping_add(n as u32);
                    } else {
                        self.wire.conceal(n, &mut self.up_pcm);
                    }
                    n
                }
                Playout::Idle => {
                    // Nothing to play: keep the room's clock running, drop a partial frame.
                    self.up_pcm.clear();
                    self.up_ts = self.up_ts.wrapping_add(480);
                    ten_ms
                }
            };
            due += Duration::from_micros((samples as u64 * 1_000_000) / self.rate as u64);
            self.encode_uplink(out);
        }
        self.up_next = Some(due);
    }

    fn encode_uplink(&mut self, out: &mut Out) {
        let frame = self.rate / 50;
        let Some(enc) = self.up_enc.as_mut() else {
            return;
        };
        let mut off = 0;
        while self.up_pcm.len() - off >= frame {
            let pcm = &self.up_pcm[off..off + frame];
            off += frame;
            match enc.encode(pcm, &mut self.opus_buf) {
                Ok(n) => {
                    let level = level_of(pcm);
                    out.publish.push((
                        Bytes::copy_from_slice(&self.opus_buf[..n]),
                        self.up_ts,
                        Some(level),
                    ));
                }
                Err(_) => add(&self.stats.decode_errors, 1),
            }
            self.up_ts = self.up_ts.wrapping_add(960);
        }
        self.up_pcm.drain(..off);
    }

    /// Queue a prompt for this leg (played from now, in real time).
    fn play(&mut self, frames: &[Bytes], now: Instant) {
        self.prompt.extend(frames.iter().cloned());
        self.prompt_next.get_or_insert(now);
    }

    /// Feed the prompt's due frames in as if a room producer sent them.
    fn feed_prompt(&mut self, now: Instant) {
        static PROMPT: std::sync::OnceLock<ParticipantId> = std::sync::OnceLock::new();
        let producer = PROMPT.get_or_init(|| Arc::from("prompt")).clone();
        while let Some(due) = self.prompt_next
            && due <= now
        {
            let Some(frame) = self.prompt.pop_front() else {
                self.prompt_next = None;
                break;
            };
            self.decode_into_source(producer.clone(), 0, &frame, now);
            self.prompt_next = Some(due + Duration::from_millis(20));
        }
    }

    /// A packet from the room.
    fn on_room_packet(&mut self, pkt: &crate::forward::MediaPacket, now: Instant) {
        self.decode_into_source(pkt.producer.clone(), pkt.ssrc, &pkt.payload, now);
    }

    fn decode_into_source(
        &mut self,
        producer: ParticipantId,
        ssrc: u32,
        payload: &[u8],
        now: Instant,
    ) {
        let key = (producer, ssrc);
        let rate = self.rate;
        let src = match self.sources.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let Ok(dec) = opus::Decoder::new(rate as u32, opus::Channels::Mono) else {
                    add(&self.stats.decode_errors, 1);
                    return;
                };
                v.insert(Source {
                    dec,
                    fifo: VecDeque::new(),
                    primed: false,
                    last: now,
                })
            }
        };
        src.last = now;
        self.scratch.resize(rate * 120 / 1_000, 0);
        match src.dec.decode(payload, &mut self.scratch, false) {
            Ok(n) => src.fifo.extend(&self.scratch[..n]),
            Err(_) => {
                add(&self.stats.decode_errors, 1);
                return;
            }
        }
        // More than 300 ms queued: the producer runs fast or we fell behind; drop the oldest.
        let cap = rate * 3 / 10;
        if src.fifo.len() > cap {
            let excess = src.fifo.len() - cap;
            src.fifo.drain(..excess);
            add(&self.stats.downlink_overflow, 1);
        }
        // Start a source once 40 ms are queued, to absorb the room's jitter.
        if !src.primed && src.fifo.len() >= rate / 25 {
            src.primed = true;
        }
    }

    /// Send what is due on the downlink up to `now`.
    fn downlink(&mut self, now: Instant, out: &mut Out) {
        let due = *self.down_next.get_or_insert(now);
        if due > now {
            return;
        }
        let ptime = self.send_ptime();
        let n = self.rate * ptime as usize / 1_000;
        let mut next = due;
        while next <= now {
            next += Duration::from_millis(ptime as u64);
            self.acc.clear();
            self.acc.resize(n, 0);
            for s in self.sources.values_mut().filter(|s| s.primed) {
                let take = n.min(s.fifo.len());
                crate::mix::add(&mut self.acc, s.fifo.drain(..take));
                if s.fifo.is_empty() {
                    s.primed = false;
                }
            }
            let mut pcm = std::mem::take(&mut self.pcm);
            crate::mix::saturate(&self.acc, &mut pcm);
            let step = self.p.codec.clock_rate() * ptime / 1_000;
            let packet = if let Some(ev) = self.dtmf_tx.pop_front() {
                let marker = std::mem::take(&mut self.dtmf_marker);
                Some(rtp::build(
                    self.p.dtmf_pt.unwrap_or(101),
                    marker,
                    self.down_seq,
                    self.dtmf_ts,
                    self.down_ssrc,
                    &ev,
                ))
            } else {
                self.wire.encode(&pcm, &mut self.wire_buf);
                self.pcm = pcm;
                Some(rtp::build(
                    self.p.pt,
                    false,
                    self.down_seq,
                    self.down_ts,
                    self.down_ssrc,
                    &self.wire_buf,
                ))
            };
            self.down_ts = self.down_ts.wrapping_add(step);
            let packet = match (packet, self.srtp.as_mut()) {
                (Some(p), Some(s)) => s.tx.encrypt_rtp(&p).ok().map(|b| b.to_vec()),
                (p, None) => p,
                (None, _) => None,
            };
            if let (Some(pkt), Some(dest), true) = (packet, self.dest, self.p.send) {
                self.down_seq = self.down_seq.wrapping_add(1);
                out.packets.push((pkt, dest));
            }
        }
        self.down_next = Some(next);
        // Forget producers silent for 5 s (they left, or changed SSRC).
        self.sources
            .retain(|_, s| now.duration_since(s.last) < Duration::from_secs(5));
    }

    /// Queue a digit: about 100 ms of tone, then the End packet three times (RFC 4733 2.5.1.4).
    fn send_digit(&mut self, d: char) -> bool {
        let (Some(_), Some(ev)) = (self.p.dtmf_pt, event_of(Digit(d))) else {
            return false;
        };
        let ptime = self.send_ptime();
        let step = (self.p.codec.clock_rate() * ptime / 1_000) as u16;
        let count = 100u32.div_ceil(ptime).max(1) as u16;
        self.dtmf_ts = self.down_ts;
        self.dtmf_marker = true;
        for k in 1..=count {
            self.dtmf_tx.push_back(
                TelephoneEvent {
                    event: ev,
                    end: false,
                    volume: 10,
                    duration: step.saturating_mul(k),
                }
                .to_bytes(),
            );
        }
        for _ in 0..3 {
            self.dtmf_tx.push_back(
                TelephoneEvent {
                    event: ev,
                    end: true,
                    volume: 10,
                    duration: step.saturating_mul(count),
                }
                .to_bytes(),
            );
        }
        add(&self.stats.dtmf_out, 1);
        true
    }

    /// When something is next due (a downlink packet, an uplink frame, a prompt frame, the RTP
    /// timeout): the leg's task sleeps until then instead of ticking.
    fn next_due(&self, now: Instant) -> Instant {
        let mut next = self.down_next.unwrap_or(now);
        for t in [self.up_next, self.prompt_next].into_iter().flatten() {
            next = next.min(t);
        }
        if self.p.receive {
            next = next.min(self.last_rx + self.p.rtp_timeout + Duration::from_millis(1));
        }
        // Never sleep past a second (a held leg that neither sends nor receives).
        next.min(now + Duration::from_secs(1))
    }

    fn timed_out(&self, now: Instant) -> bool {
        self.p.receive && now.duration_since(self.last_rx) > self.p.rtp_timeout
    }
}

async fn run(
    mut port: LegPort,
    mut io: LegIo,
    mut downlink: mpsc::Receiver<SinkMsg>,
    mut engine: Engine,
    mut commands: mpsc::UnboundedReceiver<LegCommand>,
    signals: mpsc::UnboundedSender<LegSignal>,
    stats: Arc<PstnStats>,
) {
    // Woken when the engine says something is due (about every 20 ms for the downlink and at
    // the sender's packet time for the uplink), not on a fixed tick.
    let due = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(due);
    let mut buf = vec![0u8; 2_048];
    let mut out = Out::default();
    let reason = loop {
        tokio::select! {
            r = io.recv(&mut buf) => match r {
                Some((n, from)) => engine.on_datagram(&buf[..n], from, Instant::now(), &mut out),
                // ICMP port unreachable and the like: the peer is not listening (yet).
                None => continue,
            },
            m = downlink.recv() => match m {
                Some(SinkMsg::Packet(p)) => engine.on_room_packet(&p, Instant::now()),
                Some(SinkMsg::Room(..)) => {}
                None => break LeaveReason::Disconnected,
            },
            _ = &mut due => {
                let now = Instant::now();
                engine.feed_prompt(now);
                engine.uplink(now, &mut out);
                engine.downlink(now, &mut out);
                if engine.timed_out(now) {
                    add(&stats.rtp_timeouts, 1);
                    let _ = signals.send(LegSignal::RtpTimeout);
                    break LeaveReason::MediaTimeout;
                }
            },
            c = commands.recv() => match c {
                Some(LegCommand::Update(p)) => engine.update(p),
                Some(LegCommand::SendDigit(d)) => { engine.send_digit(d); }
                Some(LegCommand::Play(frames)) => engine.play(&frames, Instant::now()),
                Some(LegCommand::Stop(r)) => break r,
                None => break LeaveReason::Left,
            },
            ev = port.event() => match ev {
                Some(ParticipantEvent::Removed(r)) => break r,
                Some(_) => {}
                None => break LeaveReason::Disconnected,
            },
        }
        for (pkt, dest) in out.packets.drain(..) {
            if io.send(&pkt, dest).await {
                add(&stats.rtp_out, 1);
            } else {
                add(&stats.send_errors, 1);
            }
        }
        for (payload, ts, level) in out.publish.drain(..) {
            port.publish(payload, ts, level);
        }
        for s in out.signals.drain(..) {
            let _ = signals.send(s);
        }
        let now = Instant::now();
        due.as_mut()
            .reset(tokio::time::Instant::from_std(engine.next_due(now)));
    };
    stats.legs.fetch_sub(1, Ordering::Relaxed);
    io.close().await;
    port.leave(reason).await;
    let _ = signals.send(LegSignal::Ended(reason));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params(codec: WireKind, pt: u8) -> LegParams {
        LegParams {
            codec,
            pt,
            dtmf_pt: Some(101),
            ptime_ms: 20,
            remote: Some("127.0.0.1:7000".parse().unwrap()),
            send: true,
            receive: true,
            rtp_timeout: Duration::from_secs(5),
            opus_complexity: 2,
            srtp: None,
        }
    }

    fn engine(codec: WireKind, pt: u8) -> Engine {
        Engine::new(params(codec, pt), Arc::new(PstnStats::default())).unwrap()
    }

    #[test]
    fn thirty_ms_pcma_is_published_as_twenty_ms_opus_at_the_senders_pace() {
        let mut e = engine(WireKind::Pcma, 8);
        let from: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let t0 = Instant::now();
        let mut out = Out::default();
        // 10 packets of 30 ms (240 samples), as sipp's g711a.pcap.
        for i in 0..10u16 {
            let pkt = rtp::build(8, i == 0, 100 + i, 240 * i as u32, 0xdee0ee8f, &[0xd5; 240]);
            e.on_datagram(&pkt, from, t0, &mut out);
        }
        assert_eq!(e.dest, Some(from), "latched to the sender");
        // 300 ms of packet time, played from t0 on.
        e.uplink(t0 + Duration::from_millis(300), &mut out);
        // 10 x 30 ms = 300 ms = 15 frames of 20 ms, minus what the buffer still holds (its
        // depth) and what is waiting for a whole 20 ms.
        let n = out.publish.len();
        assert!((12..=15).contains(&n), "{n}");
        let ts: Vec<u32> = out.publish.iter().map(|p| p.1).collect();
        assert!(ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 960));
    }

    #[test]
    fn an_opus_legs_uplink_is_forwarded_with_its_level() {
        let mut e = engine(WireKind::Opus, 111);
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let loud: Vec<i16> = (0..960)
            .map(|i| ((i as f64 * 0.2).sin() * 16_000.0) as i16)
            .collect();
        let from: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let t0 = Instant::now();
        let mut out = Out::default();
        let mut sent = Vec::new();
        for i in 0..6u16 {
            let payload = enc.encode_vec(&loud, 1_500).unwrap();
            sent.push(payload.clone());
            e.on_datagram(
                &rtp::build(111, i == 0, i, 960 * i as u32, 3, &payload),
                from,
                t0,
                &mut out,
            );
        }
        e.uplink(t0 + Duration::from_millis(120), &mut out);
        assert!(out.publish.len() >= 4, "{}", out.publish.len());
        // The payloads are the leg's own (not re-encoded), and carry a level (loud: near 0).
        assert_eq!(&out.publish[0].0[..], &sent[0][..]);
        let levels: Vec<u8> = out.publish.iter().filter_map(|p| p.2).collect();
        assert_eq!(levels.len(), out.publish.len());
        assert!(levels.iter().skip(1).all(|&l| l < 20), "{levels:?}");
    }

    #[test]
    fn a_foreign_address_cannot_take_over_a_live_stream() {
        let mut e = engine(WireKind::Pcmu, 0);
        let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let t0 = Instant::now();
        let mut out = Out::default();
        e.on_datagram(&rtp::build(0, true, 1, 0, 5, &[0xff; 160]), a, t0, &mut out);
        e.on_datagram(
            &rtp::build(0, false, 2, 160, 5, &[0xff; 160]),
            b,
            t0,
            &mut out,
        );
        assert_eq!(e.dest, Some(a));
        assert_eq!(e.stats.rtp_foreign.load(Ordering::Relaxed), 1);
        // A new SSRC (the PBX re-anchored media) re-latches.
        e.on_datagram(
            &rtp::build(0, false, 9, 0, 6, &[0xff; 160]),
            b,
            t0,
            &mut out,
        );
        assert_eq!(e.dest, Some(b));
        // Wrong payload type and junk are counted, not played.
        e.on_datagram(&rtp::build(18, false, 3, 0, 6, &[0; 20]), b, t0, &mut out);
        e.on_datagram(&[1, 2, 3], b, t0, &mut out);
        assert_eq!(e.stats.rtp_invalid.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn digits_are_reported_once_and_sent_with_three_ends() {
        let mut e = engine(WireKind::Pcmu, 0);
        let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let t0 = Instant::now();
        let mut out = Out::default();
        for (i, end) in [false, false, true, true, true].into_iter().enumerate() {
            let ev = TelephoneEvent {
                event: 1,
                end,
                volume: 10,
                duration: 160 * (i as u16 + 1),
            };
            e.on_datagram(
                &rtp::build(101, i == 0, 50 + i as u16, 8_000, 77, &ev.to_bytes()),
                a,
                t0,
                &mut out,
            );
        }
        assert_eq!(out.signals, vec![LegSignal::Dtmf('1')]);
        assert!(e.send_digit('5'));
        assert!(!e.send_digit('x'));
        let mut out = Out::default();
        e.downlink(t0, &mut out);
        e.downlink(t0 + Duration::from_millis(200), &mut out);
        let te: Vec<rtp::Rtp<'_>> = out
            .packets
            .iter()
            .filter_map(|(p, _)| rtp::parse(p))
            .filter(|p| p.pt == 101)
            .collect();
        assert_eq!(te.len(), 8);
        assert!(te[0].marker && !te[1].marker);
        assert!(te.iter().all(|p| p.timestamp == te[0].timestamp));
        assert_eq!(te.iter().filter(|p| p.payload[1] & 0x80 != 0).count(), 3);
    }

    #[test]
    fn srtp_legs_encrypt_what_they_send_and_drop_what_does_not_decrypt() {
        let a = vec![7u8; 30];
        let b = vec![9u8; 30];
        let mut p = params(WireKind::Pcmu, 0);
        p.srtp = Some(SrtpKeys {
            tag_32: false,
            local: a.clone(),
            remote: b.clone(),
        });
        let mut e = Engine::new(p, Arc::new(PstnStats::default())).unwrap();
        // The peer: sends with b, receives with a.
        let mut peer = Srtp::new(&SrtpKeys {
            tag_32: false,
            local: b,
            remote: a,
        })
        .unwrap();
        let t0 = Instant::now();
        let mut out = Out::default();
        e.downlink(t0, &mut out);
        let (pkt, _) = &out.packets[0];
        assert!(
            rtp::parse(pkt).is_some_and(|p| p.payload.len() == 170),
            "160 + 10 tag bytes"
        );
        let clear = peer.rx.decrypt_rtp(pkt).unwrap();
        assert_eq!(rtp::parse(&clear).unwrap().payload.len(), 160);
        // The peer's packet decrypts; a plain one is refused.
        let from: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let sent = peer
            .tx
            .encrypt_rtp(&rtp::build(0, true, 1, 0, 5, &[0xff; 160]))
            .unwrap();
        e.on_datagram(&sent, from, t0, &mut out);
        assert_eq!(e.stats.rtp_in.load(Ordering::Relaxed), 1);
        e.on_datagram(
            &rtp::build(0, false, 2, 160, 5, &[0xff; 160]),
            from,
            t0,
            &mut out,
        );
        assert_eq!(e.stats.rtp_invalid.load(Ordering::Relaxed), 1);
        assert!(
            format!("{:?}", e.p.srtp).contains("tag_32"),
            "keys are not printed"
        );
    }

    #[test]
    fn a_prompt_is_heard_by_this_leg() {
        let mut e = engine(WireKind::Pcmu, 0);
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let tone: Vec<i16> = (0..960)
            .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI / 48.0).sin() * 8_000.0) as i16)
            .collect();
        let frames: Vec<Bytes> = (0..25)
            .map(|_| Bytes::from(enc.encode_vec(&tone, 1_500).unwrap()))
            .collect();
        let t0 = Instant::now();
        e.play(&frames, t0);
        let mut out = Out::default();
        for ms in (0..500).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            e.feed_prompt(now);
            e.downlink(now, &mut out);
        }
        // Decoded µ-law: some packets carry the 1 kHz prompt, none did before.
        let loud = out
            .packets
            .iter()
            .filter_map(|(p, _)| rtp::parse(p))
            .filter(|p| {
                let mut pcm = Vec::new();
                crate::codec::g711::ulaw_decode_frame(p.payload, &mut pcm);
                pcm.iter().map(|&s| (s as i64).abs()).max().unwrap_or(0) > 2_000
            })
            .count();
        assert!(
            loud >= 15,
            "{loud} of {} packets carry the prompt",
            out.packets.len()
        );
    }

    #[test]
    fn silence_is_sent_when_nobody_talks_and_hold_stops_sending() {
        let mut e = engine(WireKind::Pcmu, 0);
        let t0 = Instant::now();
        let mut out = Out::default();
        e.downlink(t0, &mut out);
        e.downlink(t0 + Duration::from_millis(1_000), &mut out);
        assert_eq!(out.packets.len(), 51);
        let p = rtp::parse(&out.packets[1].0).unwrap();
        assert_eq!(p.payload.len(), 160);
        let mut held = params(WireKind::Pcmu, 0);
        held.send = false;
        held.receive = false;
        e.update(held);
        let mut out = Out::default();
        e.downlink(t0 + Duration::from_millis(2_000), &mut out);
        assert!(out.packets.is_empty());
        assert!(
            !e.timed_out(t0 + Duration::from_secs(60)),
            "no timeout while held"
        );
    }
}
