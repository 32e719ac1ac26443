//! A Janus VideoRoom participant (Janus 1.x WebSocket API, multistream VideoRoom), doing what
//! [`crate::client::Client`] does against commhub, so one generator drives either server with
//! the same media: one publish connection (Opus, 50 packets/s) and one subscribe connection
//! that carries every other publisher of the room, renegotiated as publishers come.
//!
//! Per participant: a WebSocket (`janus-protocol`) and a Janus session with two VideoRoom
//! handles. The publisher handle creates the room if needed (a room exists error is fine),
//! joins as publisher and publishes with an SDP offer; Janus answers. The subscriber handle
//! joins as subscriber with the publishers already there (`streams: [{feed}]`) and sends
//! `subscribe` for each later one; every offer Janus sends on it (`attached`, `updated`) is
//! answered with a `start` request. Candidates are trickled both ways; keepalives every 20 s.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

use crate::client::{
    MediaHooks, PayloadFn, PcEvent, PublishPc, RtpFn, STEP, new_pc, payload, publish_offer,
    start_publishing, take_over_subscriber,
};
use crate::light::Engine;

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One Janus WebSocket with its session: requests by transaction, other messages kept in order.
struct Conn {
    tx: futures::stream::SplitSink<WsStream, Message>,
    rx: futures::stream::SplitStream<WsStream>,
    next: u64,
    session: u64,
    backlog: VecDeque<Value>,
}

impl Conn {
    async fn connect(url: &str) -> anyhow::Result<Conn> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req))
            .await
            .context("timed out connecting to Janus")??;
        let (tx, rx) = ws.split();
        let mut c = Conn {
            tx,
            rx,
            next: 0,
            session: 0,
            backlog: VecDeque::new(),
        };
        let created = c.call(json!({"janus": "create"})).await?;
        c.session = created["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no session id in {created}"))?;
        Ok(c)
    }

    /// Send `v` with a fresh transaction (and the session); returns the transaction.
    async fn send(&mut self, mut v: Value) -> anyhow::Result<String> {
        self.next += 1;
        let t = format!("t{}", self.next);
        v["transaction"] = json!(t);
        if self.session != 0 {
            v["session_id"] = json!(self.session);
        }
        if debug() {
            eprintln!("janus <- {v}");
        }
        self.tx.send(Message::Text(v.to_string().into())).await?;
        Ok(t)
    }

    async fn recv(&mut self) -> anyhow::Result<Value> {
        loop {
            let m = tokio::time::timeout(STEP, self.rx.next())
                .await
                .context("timed out waiting for Janus")?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    if debug() {
                        eprintln!("janus -> {t}");
                    }
                    return Ok(serde_json::from_str(t.as_str())?);
                }
                Some(Ok(Message::Close(_))) | None => bail!("Janus closed the socket"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
            }
        }
    }

    /// Send a request and wait for its reply (skipping `ack`): `success`, or the plugin's
    /// `event`. Other messages are kept for later. Janus and plugin errors become errors.
    async fn call(&mut self, v: Value) -> anyhow::Result<Value> {
        let t = self.send(v).await?;
        loop {
            let m = self.recv().await?;
            if m["transaction"] != t.as_str() {
                self.backlog.push_back(m);
                continue;
            }
            match m["janus"].as_str() {
                Some("ack") => continue,
                Some("error") => bail!("Janus error: {}", m["error"]),
                _ => return Ok(m),
            }
        }
    }

    async fn attach(&mut self) -> anyhow::Result<u64> {
        let r = self
            .call(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await?;
        r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no handle id in {r}"))
    }

    /// A VideoRoom request on `handle`; returns the plugin data and the JSEP, if any.
    async fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<(Value, Value)> {
        let mut v = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            v["jsep"] = j;
        }
        let r = self.call(v).await?;
        Ok((r["plugindata"]["data"].clone(), r["jsep"].clone()))
    }
}

/// `JANUS_DEBUG=1` prints every message exchanged with Janus.
fn debug() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("JANUS_DEBUG").is_some_and(|v| v != "0"))
}

fn plugin_error(data: &Value) -> Option<(i64, String)> {
    data["error_code"]
        .as_i64()
        .map(|c| (c, data["error"].as_str().unwrap_or_default().to_string()))
}

/// A participant in a Janus VideoRoom.
pub struct JanusClient {
    /// Our publisher id in the room.
    pub feed: u64,
    pub room: u64,
    publish_pc: Arc<dyn PeerConnection>,
    task: tokio::task::JoinHandle<()>,
    sender: tokio::task::JoinHandle<()>,
    cmd: mpsc::UnboundedSender<Value>,
}

impl JanusClient {
    /// Join VideoRoom `room` (created if needed, for up to `max_publishers`), publish Opus at
    /// 50 packets/s and subscribe to every other publisher, now and later.
    pub async fn join(
        url: &str,
        room: u64,
        max_publishers: usize,
        name: &str,
        index: u8,
        hooks: MediaHooks,
    ) -> anyhow::Result<JanusClient> {
        let mut c = Conn::connect(url).await?;
        let pub_h = c.attach().await?;
        let sub_h = c.attach().await?;
        let (data, _) = c
            .message(
                pub_h,
                json!({"request": "create", "room": room, "publishers": max_publishers,
                       "audiocodec": "opus", "notify_joining": false,
                       "description": format!("load {room}")}),
                None,
            )
            .await?;
        if let Some((code, e)) = plugin_error(&data) {
            // 427: the room exists already.
            if code != 427 {
                bail!("create room {room}: {code} {e}");
            }
        }
        let (joined, _) = c
            .message(
                pub_h,
                json!({"request": "join", "ptype": "publisher", "room": room, "display": name}),
                None,
            )
            .await?;
        if let Some((code, e)) = plugin_error(&joined) {
            bail!("join room {room}: {code} {e}");
        }
        let feed = joined["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no publisher id in {joined}"))?;
        let mut initial: Vec<u64> = publishers(&joined);

        // Publish: we offer a sendonly Opus track.
        let PublishPc {
            pc: publish_pc,
            rx: mut pub_rx,
            track,
            ssrc,
            offer,
            light,
        } = publish_offer(&format!("janus-{index}"), index, hooks.light.as_ref()).await?;
        let (configured, jsep) = c
            .message(
                pub_h,
                json!({"request": "publish", "audiocodec": "opus"}),
                Some(json!({"type": "offer", "sdp": offer.sdp})),
            )
            .await?;
        if let Some((code, e)) = plugin_error(&configured) {
            bail!("publish: {code} {e}");
        }
        let sdp = jsep["sdp"]
            .as_str()
            .ok_or_else(|| anyhow!("no answer to publish: {configured}"))?;
        publish_pc
            .set_remote_description(RTCSessionDescription::answer(sdp.to_string())?)
            .await?;

        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Value>();
        {
            let cmd = cmd_tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = pub_rx.recv().await {
                    if let PcEvent::Candidate(cand) = ev {
                        let _ = cmd.send(trickle(pub_h, cand));
                    }
                }
            });
        }
        initial.retain(|f| *f != feed);
        let driver = Driver {
            conn: c,
            feed,
            room,
            pub_h,
            sub_h,
            publish_pc: publish_pc.clone(),
            sub_pc: None,
            known: initial.iter().copied().collect(),
            pending: initial,
            sub_state: SubState::None,
            cmd_tx: cmd_tx.clone(),
            on_rtp: hooks.on_rtp.clone(),
            light: hooks.light.clone(),
        };
        let task = tokio::spawn(driver.run(cmd_rx));
        let payload_fn: PayloadFn = match hooks.payload.clone() {
            Some(f) => f,
            None => Arc::new(move |n| payload(index, n)),
        };
        let sender = start_publishing(
            light,
            &publish_pc,
            track,
            ssrc,
            payload_fn,
            Arc::new(|_| {}),
        );
        Ok(JanusClient {
            feed,
            room,
            publish_pc,
            task,
            sender,
            cmd: cmd_tx,
        })
    }

    /// Leave (destroy the session) and close everything.
    pub async fn leave(self) {
        let _ = self.cmd.send(json!({"janus": "destroy"}));
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.sender.abort();
        self.task.abort();
        let _ = self.publish_pc.close().await;
    }
}

fn publishers(data: &Value) -> Vec<u64> {
    data["publishers"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default()
}

fn trickle(handle: u64, cand: Option<RTCIceCandidateInit>) -> Value {
    let candidate = match cand {
        Some(c) => json!({
            "candidate": c.candidate,
            "sdpMid": c.sdp_mid.unwrap_or_else(|| "0".into()),
            "sdpMLineIndex": c.sdp_mline_index.unwrap_or(0),
        }),
        None => json!({"completed": true}),
    };
    json!({"janus": "trickle", "handle_id": handle, "candidate": candidate})
}

#[derive(Debug, PartialEq, Eq)]
enum SubState {
    /// No subscription yet (nobody else published).
    None,
    /// `join` sent, waiting for the first offer.
    Joining,
    /// The first offer was answered: later publishers are added with `subscribe`.
    Joined,
}

struct Driver {
    conn: Conn,
    feed: u64,
    room: u64,
    pub_h: u64,
    sub_h: u64,
    publish_pc: Arc<dyn PeerConnection>,
    sub_pc: Option<Arc<dyn PeerConnection>>,
    known: HashSet<u64>,
    pending: Vec<u64>,
    sub_state: SubState,
    cmd_tx: mpsc::UnboundedSender<Value>,
    on_rtp: Option<RtpFn>,
    light: Option<Arc<Engine>>,
}

impl Driver {
    async fn run(mut self, mut cmd_rx: mpsc::UnboundedReceiver<Value>) {
        let mut keepalive = tokio::time::interval(Duration::from_secs(20));
        loop {
            if let Err(e) = self.subscribe_pending().await {
                eprintln!("janus: subscribe: {e:#}");
                break;
            }
            let msg = if let Some(m) = self.conn.backlog.pop_front() {
                m
            } else {
                tokio::select! {
                    c = cmd_rx.recv() => {
                        let Some(c) = c else { break };
                        let destroy = c["janus"] == "destroy";
                        if self.conn.send(c).await.is_err() || destroy {
                            break;
                        }
                        continue;
                    }
                    _ = keepalive.tick() => {
                        if self.conn.send(json!({"janus": "keepalive"})).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    m = self.conn.rx.next() => match m {
                        Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                            Ok(v) if debug() => {
                                eprintln!("janus -> {t}");
                                v
                            }
                            Ok(v) => v,
                            Err(_) => continue,
                        },
                        Some(Ok(_)) => continue,
                        _ => break,
                    },
                }
            };
            if let Err(e) = self.handle(msg).await {
                eprintln!("janus: {e:#}");
            }
        }
        if let Some(pc) = self.sub_pc.take() {
            let _ = pc.close().await;
        }
    }

    /// Ask for the publishers we learnt of and are not subscribed to yet.
    async fn subscribe_pending(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() || self.sub_state == SubState::Joining {
            return Ok(());
        }
        let streams: Vec<Value> = self.pending.drain(..).map(|f| json!({"feed": f})).collect();
        let body = if self.sub_state == SubState::None {
            self.sub_state = SubState::Joining;
            json!({"request": "join", "ptype": "subscriber", "room": self.room,
                   "streams": streams})
        } else {
            json!({"request": "subscribe", "streams": streams})
        };
        self.conn
            .send(json!({"janus": "message", "handle_id": self.sub_h, "body": body}))
            .await?;
        Ok(())
    }

    async fn handle(&mut self, m: Value) -> anyhow::Result<()> {
        let sender = m["sender"].as_u64();
        match m["janus"].as_str() {
            Some("event") => {}
            Some("trickle") => {
                let c = &m["candidate"];
                if c.get("completed").is_some() || c.is_null() {
                    return Ok(());
                }
                let init = RTCIceCandidateInit {
                    candidate: c["candidate"].as_str().unwrap_or_default().to_string(),
                    sdp_mid: c["sdpMid"].as_str().map(str::to_string),
                    sdp_mline_index: c["sdpMLineIndex"].as_u64().map(|i| i as u16),
                    ..Default::default()
                };
                let pc = if sender == Some(self.pub_h) {
                    Some(&self.publish_pc)
                } else {
                    self.sub_pc.as_ref()
                };
                if let Some(pc) = pc {
                    let _ = pc.add_ice_candidate(init).await;
                }
                return Ok(());
            }
            Some("error") => bail!("Janus error: {}", m["error"]),
            Some("hangup") => {
                eprintln!("janus: hangup on handle {sender:?}: {}", m["reason"]);
                return Ok(());
            }
            _ => return Ok(()),
        }
        let data = &m["plugindata"]["data"];
        if let Some((code, e)) = plugin_error(data) {
            bail!("VideoRoom error {code}: {e}");
        }
        if sender == Some(self.pub_h) {
            for f in publishers(data) {
                if f != self.feed && self.known.insert(f) {
                    self.pending.push(f);
                }
            }
            return Ok(());
        }
        if sender != Some(self.sub_h) || m["jsep"]["type"] != "offer" {
            return Ok(());
        }
        let sdp = m["jsep"]["sdp"].as_str().unwrap_or_default().to_string();
        let pc = match &self.sub_pc {
            Some(pc) => pc.clone(),
            None => {
                let (pc, mut rx, light_pc) = new_pc(self.light.as_ref()).await?;
                take_over_subscriber(light_pc, &pc, self.on_rtp.clone());
                let cmd = self.cmd_tx.clone();
                let sub_h = self.sub_h;
                let on_rtp = self.on_rtp.clone();
                tokio::spawn(async move {
                    while let Some(ev) = rx.recv().await {
                        match ev {
                            PcEvent::Candidate(c) => {
                                let _ = cmd.send(trickle(sub_h, c));
                            }
                            PcEvent::Track(t) => {
                                tokio::spawn(read_track(t, on_rtp.clone()));
                            }
                        }
                    }
                });
                self.sub_pc = Some(pc.clone());
                pc
            }
        };
        pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
            .await?;
        let answer = pc.create_answer(None).await?;
        pc.set_local_description(answer.clone()).await?;
        self.conn
            .send(json!({"janus": "message", "handle_id": self.sub_h,
                         "body": {"request": "start"},
                         "jsep": {"type": "answer", "sdp": answer.sdp}}))
            .await?;
        self.sub_state = SubState::Joined;
        Ok(())
    }
}

async fn read_track(track: Arc<dyn TrackRemote>, on_rtp: Option<RtpFn>) {
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                if let Some(f) = &on_rtp {
                    f(&p);
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}
