//! A webrtc-rs participant for the engine tests: one connection that offers a sendrecv Opus
//! track, answers the worker's renegotiation offers, and records every packet it receives per
//! remote stream id (= the producer's participant name). Patterns from benches/src/client.rs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use media::engine::{PeerEvent, Worker};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

pub fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Marker byte of a measured packet (sender, n) and of a warm-up probe.
pub const MARK: u8 = 0xC0;
pub const PROBE: u8 = 0xC1;

/// The payload of packet `n` of `sender`: marker, sender, n, then bytes derived from both.
pub fn payload(mark: u8, sender: u8, n: u32) -> Bytes {
    let mut v = vec![mark, sender];
    v.extend_from_slice(&n.to_be_bytes());
    for i in 0..60u32 {
        v.push((n.wrapping_mul(31).wrapping_add(i * 7) as u8) ^ sender);
    }
    Bytes::from(v)
}

/// (mark, sender, n) of a payload whose every byte is as sent.
pub fn check_payload(p: &[u8]) -> Option<(u8, u8, u32)> {
    if p.len() < 6 {
        return None;
    }
    let n = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
    (payload(p[0], p[1], n).as_ref() == p).then_some((p[0], p[1], n))
}

struct H {
    tx: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for H {
    async fn on_track(&self, t: Arc<dyn TrackRemote>) {
        let _ = self.tx.send(t);
    }
}

/// What the sender sends each 20 ms tick.
pub mod phase {
    /// Probes until told otherwise.
    pub const PROBE: u32 = 0;
    /// `MARK` packets 0..count, then nothing.
    pub const MEASURE: u32 = 1;
    /// Nothing.
    pub const QUIET: u32 = 2;
}

#[derive(Default)]
pub struct Stats {
    /// Per producer name: (mark, n) of every intact packet, and the count of damaged ones.
    pub got: Mutex<HashMap<String, Vec<(u8, u32)>>>,
    pub damaged: AtomicU64,
    /// When the first packet of each producer arrived.
    pub first: Mutex<HashMap<String, Instant>>,
    pub total: AtomicU64,
}

pub struct Client {
    pub name: String,
    pub index: u8,
    pub pc: Arc<dyn PeerConnection>,
    pub stats: Arc<Stats>,
    pub phase: Arc<AtomicU32>,
    /// Measured packets sent so far.
    pub sent: Arc<AtomicU32>,
    pub joined_at: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Measured packets a client sends in `phase::MEASURE`.
pub static MEASURE_COUNT: AtomicU32 = AtomicU32::new(50);

impl Client {
    /// Connect to `worker` in `room`. `record` false: only count packets (load runs).
    pub async fn join(
        worker: &Arc<Worker>,
        room: &str,
        name: &str,
        index: u8,
        record: bool,
    ) -> Client {
        let mut me = MediaEngine::default();
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus(),
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )
        .unwrap();
        let reg = register_default_interceptors(Registry::new(), &mut me).unwrap();
        let (ttx, mut trx) = mpsc::unbounded_channel();
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(me)
                .with_interceptor_registry(reg)
                .with_setting_engine(
                    SettingEngineBuilder::new()
                        .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(40))
                        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                        .build(),
                )
                .with_handler(Arc::new(H { tx: ttx }))
                .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
                .build()
                .await
                .unwrap(),
        );
        let ssrc: u32 = rand::random();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            name.to_string(),
            format!("mic-{name}"),
            "mic".into(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus(),
                ..Default::default()
            }],
        )));
        pc.add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .unwrap();
        let joined_at = Instant::now();
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer.clone()).await.unwrap();
        let (etx, mut erx) = mpsc::unbounded_channel();
        let answer = worker.join(room, name, offer.sdp, etx).await.unwrap();
        pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();

        let stats = Arc::new(Stats::default());
        let mut tasks = Vec::new();
        // Server offers -> answers.
        {
            let pc = pc.clone();
            let worker = worker.clone();
            let name = name.to_string();
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = erx.recv().await {
                    if let PeerEvent::Offer(sdp) = ev {
                        pc.set_remote_description(RTCSessionDescription::offer(sdp).unwrap())
                            .await
                            .unwrap();
                        let ans = pc.create_answer(None).await.unwrap();
                        pc.set_local_description(ans.clone()).await.unwrap();
                        worker.answer(&name, ans.sdp).await.unwrap();
                    }
                }
            }));
        }
        // Tracks -> recorders.
        {
            let stats = stats.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(t) = trx.recv().await {
                    tokio::spawn(record_track(t, stats.clone(), record));
                }
            }));
        }
        // The sender: 20 ms ticks.
        let phase_v = Arc::new(AtomicU32::new(phase::PROBE));
        let sent = Arc::new(AtomicU32::new(0));
        {
            let phase_v = phase_v.clone();
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                let seq0: u16 = rand::random();
                let mut probe = 0u32;
                for k in 0u32.. {
                    tick.tick().await;
                    let p = match phase_v.load(Ordering::Relaxed) {
                        phase::PROBE => {
                            probe += 1;
                            payload(PROBE, index, probe)
                        }
                        phase::MEASURE => {
                            let n = sent.load(Ordering::Relaxed);
                            if n >= MEASURE_COUNT.load(Ordering::Relaxed) {
                                continue;
                            }
                            payload(MARK, index, n)
                        }
                        _ => continue,
                    };
                    let pkt = rtp::Packet {
                        header: rtp::header::Header {
                            version: 2,
                            payload_type: 111,
                            sequence_number: seq0.wrapping_add(k as u16),
                            timestamp: k.wrapping_mul(960),
                            ssrc,
                            ..Default::default()
                        },
                        payload: p,
                    };
                    let measured = pkt.payload[0] == MARK;
                    if track.write_rtp(pkt).await.is_ok() && measured {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Client {
            name: name.to_string(),
            index,
            pc,
            stats,
            phase: phase_v,
            sent,
            joined_at,
            tasks,
        }
    }

    /// Names of producers heard so far.
    pub fn heard(&self) -> Vec<String> {
        self.stats.first.lock().unwrap().keys().cloned().collect()
    }

    pub fn hears(&self, others: &[&str]) -> bool {
        let f = self.stats.first.lock().unwrap();
        others.iter().all(|o| f.contains_key(*o))
    }

    /// Time from the offer to the first packet of the last of `others` to be heard.
    pub fn join_latency(&self, others: &[&str]) -> Option<Duration> {
        let f = self.stats.first.lock().unwrap();
        let mut worst = Duration::ZERO;
        for o in others {
            worst = worst.max(f.get(*o)?.duration_since(self.joined_at));
        }
        Some(worst)
    }

    /// Sequence numbers `n` of `MARK` packets from `producer`, sorted.
    pub fn marked_from(&self, producer: &str) -> Vec<u32> {
        let g = self.stats.got.lock().unwrap();
        let mut v: Vec<u32> = g
            .get(producer)
            .map(|v| {
                v.iter()
                    .filter(|(m, _)| *m == MARK)
                    .map(|(_, n)| *n)
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.pc.close().await;
    }
}

async fn record_track(track: Arc<dyn TrackRemote>, stats: Arc<Stats>, record: bool) {
    let stream = track.stream_id().await.to_string();
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                stats.total.fetch_add(1, Ordering::Relaxed);
                {
                    let mut f = stats.first.lock().unwrap();
                    if !f.contains_key(&stream) {
                        f.insert(stream.clone(), Instant::now());
                    }
                }
                if !record {
                    continue;
                }
                match check_payload(&p.payload) {
                    Some((mark, _sender, n)) => stats
                        .got
                        .lock()
                        .unwrap()
                        .entry(stream.clone())
                        .or_default()
                        .push((mark, n)),
                    None => {
                        stats.damaged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

/// Poll `f` every 20 ms until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn worker() -> Arc<Worker> {
    Arc::new(
        Worker::spawn(media::engine::EngineConfig::local(
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap(),
    )
}
