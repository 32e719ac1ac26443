//! The webrtc-rs signaling client shared by the integration tests and the load generator: it
//! speaks commhub's `/ws` protocol with a publish connection (a synthetic Opus stream whose
//! payloads can be verified byte for byte) and a subscribe connection that records what it gets.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::light::{Engine, LightPc, Publish};
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionIceEvent,
    RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};

/// Timeout for one protocol step.
pub const STEP: Duration = Duration::from_secs(15);

/// A raw signaling connection: JSON in, JSON out.
pub struct Ws {
    tx: futures::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Message,
    >,
    pub rx: futures::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
}

impl Ws {
    pub async fn connect(url: &str) -> anyhow::Result<Ws> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let (tx, rx) = ws.split();
        let mut w = Ws { tx, rx };
        let welcome = w.recv().await?;
        if welcome["type"] != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        Ok(w)
    }

    pub async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.tx.send(Message::Text(v.to_string().into())).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, m: Message) -> anyhow::Result<()> {
        self.tx.send(m).await?;
        Ok(())
    }

    /// Next text message as JSON (None on close), within the step timeout.
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        loop {
            let m = tokio::time::timeout(STEP, self.rx.next())
                .await
                .context("timed out waiting for a server message")?;
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(_))) | None => bail!("socket closed"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
            }
        }
    }

    /// Skip messages until one of `ty` arrives.
    pub async fn expect(&mut self, ty: &str) -> anyhow::Result<Value> {
        loop {
            let v = self.recv().await?;
            if v["type"] == ty {
                return Ok(v);
            }
            if v["type"] == "error" {
                bail!("server error while waiting for {ty}: {v}");
            }
        }
    }

    /// Next message that is not an event we ignore (levels, candidates).
    pub async fn next_significant(&mut self) -> anyhow::Result<Value> {
        loop {
            let v = self.recv().await?;
            match v["type"].as_str() {
                Some("audio_levels") | Some("active_speaker") | Some("ice_candidate") => continue,
                _ => return Ok(v),
            }
        }
    }
}

pub(crate) fn media_engine() -> anyhow::Result<(MediaEngine, Registry)> {
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    let reg = register_default_interceptors(Registry::new(), &mut me)?;
    Ok((me, reg))
}

pub fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

pub(crate) enum PcEvent {
    Candidate(Option<RTCIceCandidateInit>),
    Track(Arc<dyn TrackRemote>),
}

struct H {
    tx: mpsc::UnboundedSender<PcEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for H {
    async fn on_ice_candidate(&self, e: RTCPeerConnectionIceEvent) {
        if let Ok(c) = e.candidate.to_json() {
            let _ = self.tx.send(PcEvent::Candidate(Some(c)));
        }
    }
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            let _ = self.tx.send(PcEvent::Candidate(None));
        }
    }
    async fn on_track(&self, t: Arc<dyn TrackRemote>) {
        let _ = self.tx.send(PcEvent::Track(t));
    }
}

/// A publish connection as [`publish_offer`] makes it.
pub(crate) struct PublishPc {
    pub pc: Arc<dyn PeerConnection>,
    pub rx: mpsc::UnboundedReceiver<PcEvent>,
    pub track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    pub offer: RTCSessionDescription,
    /// With the light engine: the handle that takes its media over after DTLS.
    pub light: Option<LightPc>,
}

/// A publish connection with one sendonly Opus track (its own random SSRC) and the offer for
/// it, already set as the local description. Shared by the commhub and Janus clients.
pub(crate) async fn publish_offer(
    stream_id: &str,
    index: u8,
    light: Option<&Arc<Engine>>,
) -> anyhow::Result<PublishPc> {
    let (pc, rx, light) = new_pc(light).await?;
    let (track, ssrc) = opus_track(stream_id, &format!("mic-{index}"));
    pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer.clone()).await?;
    Ok(PublishPc {
        pc,
        rx,
        track,
        ssrc,
        offer,
        light,
    })
}

/// Start publishing `payload(n)` at 50 packets/s on a publish connection: through webrtc-rs
/// ([`spawn_opus_sender`]), or, with the light engine, from the engine once DTLS is done.
pub(crate) fn start_publishing(
    light: Option<LightPc>,
    pc: &Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload: PayloadFn,
    sent: Arc<dyn Fn(u32) + Send + Sync>,
) -> tokio::task::JoinHandle<()> {
    match light {
        Some(light) => {
            let pc = pc.clone();
            let publish = Publish {
                ssrc,
                payload,
                sent: Some(sent),
            };
            tokio::spawn(async move {
                if let Err(e) = light.take_over(pc, None, Some(publish)).await {
                    eprintln!("light: publish connection: {e:#}");
                }
            })
        }
        None => spawn_opus_sender(track, ssrc, move |n| payload(n), move |n| sent(n)),
    }
}

/// With the light engine, hand a subscribe connection's received media to it once DTLS is
/// done.
pub(crate) fn take_over_subscriber(
    light: Option<LightPc>,
    pc: &Arc<dyn PeerConnection>,
    on_rtp: Option<RtpFn>,
) {
    if let Some(light) = light {
        let pc = pc.clone();
        tokio::spawn(async move {
            if let Err(e) = light.take_over(pc, on_rtp, None).await {
                eprintln!("light: subscribe connection: {e:#}");
            }
        });
    }
}

/// A sendonly Opus track with a random SSRC of its own (returned with it).
pub fn opus_track(stream_id: &str, track_id: &str) -> (Arc<TrackLocalStaticRTP>, u32) {
    let ssrc: u32 = rand::random();
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_string(),
        track_id.to_string(),
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
    (track, ssrc)
}

/// Send packet `n` = `payload(n)` on `track` every 20 ms (payload type 111, continuous
/// sequence numbers from a random start, 960 timestamp units apart) until the task is aborted.
/// `sent(n)` is called after each packet the track took.
pub fn spawn_opus_sender(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload: impl Fn(u32) -> Bytes + Send + 'static,
    sent: impl Fn(u32) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let seq0: u16 = rand::random();
        for n in 0u32.. {
            tick.tick().await;
            let pkt = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: seq0.wrapping_add(n as u16),
                    timestamp: n.wrapping_mul(960),
                    ssrc,
                    ..Default::default()
                },
                payload: payload(n),
            };
            if track.write_rtp(pkt).await.is_ok() {
                sent(n);
            }
        }
    })
}

/// A client peer connection on one loopback socket. With the light engine (`light`), the same
/// connection, whose socket and SRTP keys the engine can take over (see [`crate::light`]).
pub(crate) async fn new_pc(
    light: Option<&Arc<Engine>>,
) -> anyhow::Result<(
    Arc<dyn PeerConnection>,
    mpsc::UnboundedReceiver<PcEvent>,
    Option<LightPc>,
)> {
    let (me, reg) = media_engine()?;
    let (tx, rx) = mpsc::unbounded_channel();
    // Browsers pace ICE checks at about 50 ms; the webrtc-rs default of 200 ms would add
    // client-side delay to every join measured here.
    let mut settings = SettingEngineBuilder::new()
        .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(40))
        // No multicast socket per connection: candidates are plain loopback addresses,
        // and a network namespace with only `lo` (see benches/compare.sh) has no
        // multicast route.
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
    let mut builder = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_interceptor_registry(reg)
        .with_handler(Arc::new(H { tx }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()]);
    let mut light_pc = None;
    if let Some(engine) = light {
        let (runtime, crypto, lp) = engine.pc_parts();
        settings = settings.with_crypto_provider(crypto);
        builder = builder.with_runtime(runtime);
        light_pc = Some(lp);
    }
    let pc = builder
        .with_setting_engine(settings.build())
        .build()
        .await?;
    Ok((Arc::new(pc), rx, light_pc))
}

/// The payload a test publisher sends for packet `n`: a header naming the sender and `n`,
/// then bytes derived from both, so a receiver can check every byte.
pub fn payload(sender: u8, n: u32) -> Bytes {
    let mut v = vec![0xC0, sender];
    v.extend_from_slice(&n.to_be_bytes());
    for i in 0..60u32 {
        v.push((n.wrapping_mul(31).wrapping_add(i * 7) as u8) ^ sender);
    }
    Bytes::from(v)
}

/// Check a received payload; returns (sender, n) when every byte is as sent.
pub fn check_payload(p: &[u8]) -> Option<(u8, u32)> {
    if p.len() < 6 || p[0] != 0xC0 {
        return None;
    }
    let sender = p[1];
    let n = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
    (payload(sender, n).as_ref() == p).then_some((sender, n))
}

/// Payload of packet `n` of a publisher; called right before the packet is written.
pub type PayloadFn = Arc<dyn Fn(u32) -> Bytes + Send + Sync>;
/// Called with every RTP packet a subscriber receives.
pub type RtpFn = Arc<dyn Fn(&rtp::Packet) + Send + Sync>;

/// What a participant sends and where what it receives goes. The default sends [`payload`]
/// and stores every packet in [`Client::received`]; the load generator sends stamped Opus and
/// only counts.
#[derive(Clone, Default)]
pub struct MediaHooks {
    pub payload: Option<PayloadFn>,
    pub on_rtp: Option<RtpFn>,
    /// Join token (servers with auth on) and the role to ask for without one.
    pub token: Option<String>,
    /// Media through the light engine once DTLS is done (needs `on_rtp`: the engine does not
    /// fill [`Client::received`]).
    pub light: Option<Arc<Engine>>,
}

/// One received packet.
#[derive(Debug, Clone)]
pub struct Received {
    pub seq: u16,
    pub ssrc: u32,
    pub payload: Bytes,
}

/// A webrtc-rs participant speaking the `/ws` protocol.
pub struct Client {
    pub id: String,
    pub room: String,
    pub index: u8,
    cmd: mpsc::UnboundedSender<Value>,
    /// Everything received, per remote participant id (the track's stream id).
    pub received: Arc<Mutex<HashMap<String, Vec<Received>>>>,
    /// Every server message, in order.
    pub messages: Arc<Mutex<Vec<Value>>>,
    publish_pc: Arc<dyn PeerConnection>,
    task: tokio::task::JoinHandle<()>,
    sender: tokio::task::JoinHandle<()>,
    pub sent: Arc<std::sync::atomic::AtomicU32>,
}

impl Client {
    /// Join `room`, publish a synthetic Opus stream (50 packets/s) and subscribe to everyone.
    pub async fn join(ws_url: &str, room: &str, name: &str, index: u8) -> anyhow::Result<Client> {
        Client::join_with(ws_url, room, name, index, MediaHooks::default()).await
    }

    /// [`Client::join`] with other media: see [`MediaHooks`].
    pub async fn join_with(
        ws_url: &str,
        room: &str,
        name: &str,
        index: u8,
        hooks: MediaHooks,
    ) -> anyhow::Result<Client> {
        let mut ws = Ws::connect(ws_url).await?;
        let mut join = json!({"type":"join","room":room,"display_name":name,"role":"customer"});
        if let Some(t) = &hooks.token {
            join["token"] = json!(t);
        }
        ws.send(join).await?;
        let joined = ws.expect("joined").await?;
        let id = joined["participant_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no participant_id"))?
            .to_string();

        // Publish connection: we offer a sendonly Opus track.
        let PublishPc {
            pc: publish_pc,
            rx: mut pub_rx,
            track,
            ssrc,
            offer,
            light,
        } = publish_offer(&format!("client-{index}"), index, hooks.light.as_ref()).await?;
        ws.send(json!({"type":"publish","sdp":offer.sdp})).await?;
        let mut backlog = Vec::new();
        let answer = loop {
            let v = ws.recv().await?;
            match v["type"].as_str() {
                Some("publish_answer") => break v,
                Some("error") => bail!("publish refused: {v}"),
                // Events that race the answer are replayed by the driver.
                _ => backlog.push(v),
            }
        };
        publish_pc
            .set_remote_description(RTCSessionDescription::answer(
                answer["sdp"].as_str().unwrap_or_default().to_string(),
            )?)
            .await?;

        let received: Arc<Mutex<HashMap<String, Vec<Received>>>> = Default::default();
        let messages: Arc<Mutex<Vec<Value>>> = Default::default();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Value>();
        // Forward our publish candidates.
        {
            let cmd = cmd_tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = pub_rx.recv().await {
                    if let PcEvent::Candidate(c) = ev {
                        let _ = cmd
                            .send(json!({"type":"ice_candidate","target":"publish","candidate":c}));
                    }
                }
            });
        }
        let task = tokio::spawn(drive(
            ws,
            backlog,
            cmd_rx,
            cmd_tx.clone(),
            publish_pc.clone(),
            received.clone(),
            messages.clone(),
            hooks.on_rtp.clone(),
            hooks.light.clone(),
        ));
        let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let sender = {
            let sent = sent.clone();
            let payload_fn: PayloadFn = match hooks.payload.clone() {
                Some(f) => f,
                None => Arc::new(move |n| payload(index, n)),
            };
            start_publishing(
                light,
                &publish_pc,
                track,
                ssrc,
                payload_fn,
                Arc::new(move |n| sent.store(n + 1, std::sync::atomic::Ordering::Relaxed)),
            )
        };
        Ok(Client {
            id,
            room: room.to_string(),
            index,
            cmd: cmd_tx,
            received,
            messages,
            publish_pc,
            task,
            sender,
            sent,
        })
    }

    pub fn count_from(&self, participant: &str) -> usize {
        self.received
            .lock()
            .expect("lock")
            .get(participant)
            .map_or(0, |v| v.len())
    }

    pub fn packets_from(&self, participant: &str) -> Vec<Received> {
        self.received
            .lock()
            .expect("lock")
            .get(participant)
            .cloned()
            .unwrap_or_default()
    }

    pub fn saw(&self, ty: &str, key: &str, val: &str) -> bool {
        self.messages
            .lock()
            .expect("lock")
            .iter()
            .any(|m| m["type"] == ty && m[key] == val)
    }

    pub fn messages_of(&self, ty: &str) -> Vec<Value> {
        self.messages
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| m["type"] == ty)
            .cloned()
            .collect()
    }

    /// Leave the room and close everything.
    pub async fn leave(self) {
        let _ = self.cmd.send(json!({"type":"leave"}));
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.sender.abort();
        self.task.abort();
        let _ = self.publish_pc.close().await;
    }

    /// Vanish without leaving (tab closed): the socket and connections just stop.
    pub async fn vanish(self) {
        self.sender.abort();
        self.task.abort();
        let _ = self.publish_pc.close().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    mut ws: Ws,
    backlog: Vec<Value>,
    mut cmd_rx: mpsc::UnboundedReceiver<Value>,
    cmd_tx: mpsc::UnboundedSender<Value>,
    publish_pc: Arc<dyn PeerConnection>,
    received: Arc<Mutex<HashMap<String, Vec<Received>>>>,
    messages: Arc<Mutex<Vec<Value>>>,
    on_rtp: Option<RtpFn>,
    light: Option<Arc<Engine>>,
) {
    let mut sub_pc: Option<Arc<dyn PeerConnection>> = None;
    for v in backlog {
        handle(
            v,
            &mut ws,
            &mut sub_pc,
            &cmd_tx,
            &publish_pc,
            &received,
            &messages,
            &on_rtp,
            &light,
        )
        .await;
    }
    let mut ping = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            c = cmd_rx.recv() => {
                let Some(c) = c else { break };
                if ws.send(c).await.is_err() { break; }
            }
            _ = ping.tick() => {
                let _ = ws.send(json!({"type":"ping"})).await;
            }
            m = ws.rx.next() => {
                let v: Value = match m {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                if !handle(v, &mut ws, &mut sub_pc, &cmd_tx, &publish_pc, &received, &messages, &on_rtp, &light).await {
                    break;
                }
            }
        }
    }
    if let Some(pc) = sub_pc {
        let _ = pc.close().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    v: Value,
    ws: &mut Ws,
    sub_pc: &mut Option<Arc<dyn PeerConnection>>,
    cmd_tx: &mpsc::UnboundedSender<Value>,
    publish_pc: &Arc<dyn PeerConnection>,
    received: &Arc<Mutex<HashMap<String, Vec<Received>>>>,
    messages: &Arc<Mutex<Vec<Value>>>,
    on_rtp: &Option<RtpFn>,
    light: &Option<Arc<Engine>>,
) -> bool {
    // A load run keeps no level events: they would pile up for its whole duration.
    let level_event = matches!(
        v["type"].as_str(),
        Some("audio_levels") | Some("active_speaker")
    );
    if on_rtp.is_none() || !level_event {
        messages.lock().expect("lock").push(v.clone());
    }
    match v["type"].as_str() {
        Some("subscribe_offer") => {
            if sub_pc.is_none() {
                match new_pc(light.as_ref()).await {
                    Ok((pc, mut rx, light_pc)) => {
                        take_over_subscriber(light_pc, &pc, on_rtp.clone());
                        let cmd = cmd_tx.clone();
                        let received = received.clone();
                        let on_rtp = on_rtp.clone();
                        tokio::spawn(async move {
                            while let Some(ev) = rx.recv().await {
                                match ev {
                                    PcEvent::Candidate(c) => {
                                        let _ = cmd.send(json!({"type":"ice_candidate","target":"subscribe","candidate":c}));
                                    }
                                    PcEvent::Track(t) => {
                                        tokio::spawn(record(t, received.clone(), on_rtp.clone()));
                                    }
                                }
                            }
                        });
                        *sub_pc = Some(pc);
                    }
                    Err(e) => {
                        eprintln!("client: subscribe pc: {e}");
                        return false;
                    }
                }
            }
            let Some(pc) = sub_pc.as_ref() else {
                return false;
            };
            let sdp = v["sdp"].as_str().unwrap_or_default().to_string();
            let rev = v["revision"].clone();
            let res = async {
                pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
                    .await?;
                let ans = pc.create_answer(None).await?;
                pc.set_local_description(ans.clone()).await?;
                Ok::<_, anyhow::Error>(ans.sdp)
            }
            .await;
            match res {
                Ok(sdp) => {
                    let _ = ws
                        .send(json!({"type":"subscribe_answer","sdp":sdp,"revision":rev}))
                        .await;
                }
                Err(e) => eprintln!("client: subscribe negotiation failed: {e}"),
            }
        }
        Some("ice_candidate") => {
            let Some(c) = v.get("candidate").filter(|c| !c.is_null()) else {
                return true;
            };
            let Ok(init) = serde_json::from_value::<RTCIceCandidateInit>(c.clone()) else {
                return true;
            };
            let pc = if v["target"] == "publish" {
                Some(publish_pc)
            } else {
                sub_pc.as_ref()
            };
            if let Some(pc) = pc {
                let _ = pc.add_ice_candidate(init).await;
            }
        }
        _ => {}
    }
    true
}

async fn record(
    track: Arc<dyn TrackRemote>,
    received: Arc<Mutex<HashMap<String, Vec<Received>>>>,
    on_rtp: Option<RtpFn>,
) {
    let stream = track.stream_id().await.to_string();
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                if let Some(f) = &on_rtp {
                    f(&p);
                    continue;
                }
                received
                    .lock()
                    .expect("lock")
                    .entry(stream.clone())
                    .or_default()
                    .push(Received {
                        seq: p.header.sequence_number,
                        ssrc: p.header.ssrc,
                        payload: p.payload.clone(),
                    });
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

/// Poll `f` every 100 ms until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
