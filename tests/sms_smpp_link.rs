//! The SMPP link (`commhub::sms::gateway::smpp::spawn`) against the simulated SMSC
//! (`tests/sms/smsc.js`, npm smpp 0.5.1), driven directly through its channels: no server, no
//! database. Each test starts its own node process on free ports.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use commhub::config::SmppConfig;
use commhub::sms::encoding::{from_septets, from_ucs2};
use commhub::sms::gateway::SmsStats;
use commhub::sms::gateway::link::{LinkEvent, OutPart, Retry};
use commhub::sms::reassemble::Concat;
use commhub::sms::receipt::MessageStatus;
use commhub::sms::segment::segment;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sms_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sms")
}

/// A request to the simulator's control port.
async fn control(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (_, json) = out.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(json).unwrap()
}

/// The simulator process (killed on drop).
struct Smsc {
    _child: Child,
    smpp_port: u16,
    control_port: u16,
}

impl Smsc {
    async fn start() -> Smsc {
        let dir = sms_dir();
        if !dir.join("node_modules/smpp/package.json").exists() {
            let st = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .unwrap();
            assert!(st.success(), "npm ci in tests/sms failed");
        }
        let (smpp_port, control_port) = (free_port(), free_port());
        let mut child = Command::new("node")
            .arg(dir.join("smsc.js"))
            .arg(smpp_port.to_string())
            .arg(control_port.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node on PATH");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("simulator ready in 10 s")
            .unwrap();
        assert_eq!(line.as_deref(), Some("ready"));
        Smsc {
            _child: child,
            smpp_port,
            control_port,
        }
    }

    async fn http(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        control(self.control_port, method, path, body).await
    }

    async fn mode(&self, m: Value) {
        self.http("POST", "/mode", Some(m)).await;
    }

    async fn stats(&self) -> Value {
        self.http("GET", "/stats", None).await
    }
}

struct Link {
    smsc: Smsc,
    parts: mpsc::Sender<OutPart>,
    events: mpsc::Receiver<LinkEvent>,
    backlog: VecDeque<LinkEvent>,
    stats: Arc<SmsStats>,
    shutdown: watch::Sender<bool>,
    handle: Option<JoinHandle<()>>,
}

fn config(smsc: &Smsc) -> SmppConfig {
    SmppConfig {
        host: "127.0.0.1".into(),
        port: smsc.smpp_port,
        system_id: "commhub".into(),
        password: "secret".into(),
        window: 10,
        response_timeout_secs: 5,
        throttle_pause_ms: 200,
        reconnect_min_ms: 200,
        reconnect_max_ms: 1000,
        ..SmppConfig::default()
    }
}

impl Link {
    async fn start(mode: Option<Value>, tweak: impl FnOnce(&mut SmppConfig)) -> Link {
        let smsc = Smsc::start().await;
        if let Some(m) = mode {
            smsc.mode(m).await;
        }
        let mut cfg = config(&smsc);
        tweak(&mut cfg);
        let (parts, parts_rx) = mpsc::channel(16);
        let (events_tx, events) = mpsc::channel(256);
        let stats = Arc::new(SmsStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let handle = commhub::sms::gateway::smpp::spawn(
            cfg,
            parts_rx,
            events_tx,
            stats.clone(),
            shutdown_rx,
        );
        Link {
            smsc,
            parts,
            events,
            backlog: VecDeque::new(),
            stats,
            shutdown,
            handle: Some(handle),
        }
    }

    /// The next event matching `f` (earlier non-matching ones are kept for later).
    async fn next(&mut self, what: &str, mut f: impl FnMut(&LinkEvent) -> bool) -> LinkEvent {
        if let Some(i) = self.backlog.iter().position(&mut f) {
            return self.backlog.remove(i).unwrap();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let ev = match timeout(deadline - Instant::now(), self.events.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => panic!("link ended while waiting for {what}"),
                Err(_) => panic!("no {what} in {WAIT:?}; backlog: {:?}", self.backlog),
            };
            if f(&ev) {
                return ev;
            }
            self.backlog.push_back(ev);
        }
    }

    async fn bind_state(&mut self, role: &str, state: u8) {
        let what = format!("BindState {role} {state}");
        self.next(&what, |e| {
            matches!(e, LinkEvent::BindState { role: r, state: s } if *r == role && *s == state)
        })
        .await;
        // Earlier states are history.
        self.backlog
            .retain(|e| !matches!(e, LinkEvent::BindState { .. }));
    }

    async fn accepted(&mut self, id: Uuid, part: u8) -> String {
        match self
            .next("Accepted", |e| {
                matches!(e, LinkEvent::Accepted { message_id, part: p, .. } if *message_id == id && *p == part)
            })
            .await
        {
            LinkEvent::Accepted {
                carrier_message_id, ..
            } => carrier_message_id,
            _ => unreachable!(),
        }
    }

    async fn receipt(&mut self, id: &str) -> (MessageStatus, Option<String>) {
        match self
            .next("Receipt", |e| {
                matches!(e, LinkEvent::Receipt { carrier_message_id, .. } if carrier_message_id == id)
            })
            .await
        {
            LinkEvent::Receipt {
                status,
                error_code,
                ack,
                ..
            } => {
                ack.unwrap().send(true).unwrap();
                (status, error_code)
            }
            _ => unreachable!(),
        }
    }

    async fn send(&self, parts: &[OutPart]) {
        for p in parts {
            self.parts.send(p.clone()).await.unwrap();
        }
    }

    async fn stop(&mut self) {
        self.shutdown.send(true).unwrap();
        timeout(Duration::from_secs(5), self.handle.take().unwrap())
            .await
            .expect("link stops within 5 s")
            .unwrap();
    }
}

fn message(text: &str, reference: u8) -> Vec<OutPart> {
    let s = segment(text).unwrap();
    let id = Uuid::new_v4();
    (0..s.parts.len())
        .map(|i| OutPart {
            message_id: id,
            part: (i + 1) as u8,
            total: s.parts.len() as u8,
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            encoding: s.encoding,
            payload: s.parts[i].clone(),
            udh: s.udh(reference, i),
            text: text.into(),
            media_urls: vec![],
        })
        .collect()
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bind_send_single_and_multipart() {
    let mut l = Link::start(None, |_| {}).await;
    l.bind_state("transceiver", 2).await;
    assert_eq!(l.stats.bind_state_tx.load(Ordering::Relaxed), 2);

    let single = message("Hello from commhub", 0);
    let long_text: String =
        (0..50).map(|i| format!("word{i:02} ")).collect::<String>() + "and the end.";
    let multi = message(&long_text, 0x5A);
    assert_eq!(multi.len(), 3);
    l.send(&single).await;
    l.send(&multi).await;
    let id1 = l.accepted(single[0].message_id, 1).await;
    let mut ids = vec![id1.clone()];
    for p in 1..=3 {
        ids.push(l.accepted(multi[0].message_id, p).await);
    }
    assert!(ids.iter().all(|i| !i.is_empty()));
    ids.dedup();
    assert_eq!(ids.len(), 4, "distinct carrier ids: {ids:?}");
    // Default receipts: DELIVRD.
    assert_eq!(l.receipt(&id1).await, (MessageStatus::Delivered, None));

    let st = l.smsc.stats().await;
    let msgs = st["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    let m0 = &msgs[0];
    assert_eq!(m0["source"], "15550001111");
    assert_eq!(m0["source_ton"], 1);
    assert_eq!(m0["destination"], "15550002222");
    assert_eq!(m0["destination_ton"], 1);
    assert_eq!(m0["data_coding"], 0);
    assert_eq!(m0["esm_class"], 0);
    assert_eq!(m0["registered_delivery"], 1);
    assert_eq!(m0["udh"], Value::Null);
    assert_eq!(m0["text"], "Hello from commhub");
    assert_eq!(m0["has_message_payload"], false);
    let mut joined = String::new();
    for (i, m) in msgs[1..].iter().enumerate() {
        assert_eq!(m["data_coding"], 0);
        assert_eq!(m["esm_class"], 0x40);
        assert_eq!(m["udh"], format!("0500035a03{:02x}", i + 1));
        joined.push_str(m["text"].as_str().unwrap());
    }
    assert_eq!(joined, long_text);
    assert_eq!(l.stats.sent.load(Ordering::Relaxed), 4);

    // Shutdown: unbind, then the task ends.
    l.stop().await;
    let st = l.smsc.stats().await;
    assert_eq!(st["unbinds"], 1);
    assert_eq!(l.stats.bind_state_tx.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn receipts_delivered_and_undeliverable() {
    let mut l = Link::start(Some(json!({"id_format": "dec"})), |_| {}).await;
    l.bind_state("transceiver", 2).await;
    let m = message("first", 0);
    l.send(&m).await;
    let id = l.accepted(m[0].message_id, 1).await;
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");
    assert_eq!(l.receipt(&id).await, (MessageStatus::Delivered, None));

    l.smsc
        .mode(json!({"receipt_stat": "UNDELIV", "receipt_err": "034"}))
        .await;
    let m = message("second", 0);
    l.send(&m).await;
    let id = l.accepted(m[0].message_id, 1).await;
    assert_eq!(
        l.receipt(&id).await,
        (MessageStatus::Failed, Some("034".into()))
    );
    // Receipt before the submit's answer, and an ENROUTE after the final one.
    l.smsc
        .mode(json!({"receipt_stat": "DELIVRD", "receipt_first": true, "enroute_after": true}))
        .await;
    let m = message("third", 0);
    l.send(&m).await;
    let id = l.accepted(m[0].message_id, 1).await;
    assert_eq!(l.receipt(&id).await.0, MessageStatus::Delivered);
    assert_eq!(l.receipt(&id).await.0, MessageStatus::Sent);
    let smsc = &l.smsc;
    wait_until("receipts acked", async || {
        smsc.stats().await["receipts_acked"] == 4
    })
    .await;
    assert_eq!(l.smsc.stats().await["receipts_nacked"], 0);
    l.stop().await;
}

#[tokio::test]
async fn bind_refused_then_allowed() {
    let mut l = Link::start(Some(json!({"refuse_bind": true})), |_| {}).await;
    let smsc = &l.smsc;
    wait_until("two refused binds", async || {
        smsc.stats().await["bind_refused"].as_u64().unwrap() >= 2
    })
    .await;
    assert!(l.stats.bind_failures.load(Ordering::Relaxed) >= 1);
    assert!(l.stats.bind_state_tx.load(Ordering::Relaxed) < 2);
    l.smsc.mode(json!({"refuse_bind": false})).await;
    l.bind_state("transceiver", 2).await;
    assert!(l.stats.bind_failures.load(Ordering::Relaxed) >= 2);
    let m = message("now it works", 0);
    l.send(&m).await;
    l.accepted(m[0].message_id, 1).await;
    l.stop().await;
}

#[tokio::test]
async fn throttled_parts_are_resent_and_accepted() {
    let mut l = Link::start(Some(json!({"throttle_every": 3})), |_| {}).await;
    l.bind_state("transceiver", 2).await;
    let msgs: Vec<OutPart> = (0..9)
        .map(|i| message(&format!("throttle test {i}"), 0).remove(0))
        .collect();
    l.send(&msgs).await;
    let mut accepted = std::collections::HashSet::new();
    let mut throttled = 0;
    while accepted.len() < msgs.len() {
        let ev = l
            .next("Accepted or Failed", |e| {
                matches!(e, LinkEvent::Accepted { .. } | LinkEvent::Failed { .. })
            })
            .await;
        match ev {
            LinkEvent::Accepted { message_id, .. } => {
                assert!(accepted.insert(message_id), "accepted twice");
            }
            LinkEvent::Failed {
                message_id,
                retry,
                code,
                ..
            } => {
                assert_eq!(retry, Retry::Throttled);
                assert_eq!(code, "ESME_RTHROTTLED");
                throttled += 1;
                let p = msgs.iter().find(|p| p.message_id == message_id).unwrap();
                l.parts.send(p.clone()).await.unwrap();
            }
            _ => unreachable!(),
        }
    }
    assert!(throttled >= 3, "{throttled}");
    assert_eq!(l.stats.throttled.load(Ordering::Relaxed), throttled);
    let st = l.smsc.stats().await;
    assert_eq!(st["throttled"], throttled);
    assert_eq!(st["submits"], 9 + throttled);
    l.stop().await;
}

#[tokio::test]
async fn kick_mid_stream_reports_lost_and_rebinds() {
    let mut l = Link::start(Some(json!({"slow_submit_ms": 3000})), |_| {}).await;
    l.bind_state("transceiver", 2).await;
    let msgs: Vec<OutPart> = (0..5)
        .map(|i| message(&format!("kick {i}"), 0).remove(0))
        .collect();
    l.send(&msgs).await;
    let smsc = &l.smsc;
    wait_until("5 submits at the SMSC", async || {
        smsc.stats().await["submits"] == 5
    })
    .await;
    assert_eq!(l.stats.in_flight.load(Ordering::Relaxed), 5);
    l.smsc.mode(json!({"slow_submit_ms": 0})).await;
    l.smsc.http("POST", "/kick", None).await;
    let mut lost = std::collections::HashSet::new();
    for _ in 0..5 {
        match l
            .next("Failed Lost", |e| {
                matches!(
                    e,
                    LinkEvent::Failed {
                        retry: Retry::Lost,
                        ..
                    }
                )
            })
            .await
        {
            LinkEvent::Failed { message_id, .. } => lost.insert(message_id),
            _ => unreachable!(),
        };
    }
    assert_eq!(lost.len(), 5);
    assert_eq!(l.stats.in_flight.load(Ordering::Relaxed), 0);
    l.bind_state("transceiver", 0).await;
    l.bind_state("transceiver", 2).await;
    // Resent after the rebind: accepted.
    l.send(&msgs).await;
    for m in &msgs {
        l.accepted(m.message_id, 1).await;
    }
    assert_eq!(l.smsc.stats().await["binds"], 2);
    l.stop().await;
}

async fn inbound(
    l: &mut Link,
) -> (
    commhub::sms::gateway::link::InboundPart,
    commhub::sms::gateway::link::Ack,
) {
    match l
        .next("Inbound", |e| matches!(e, LinkEvent::Inbound { .. }))
        .await
    {
        LinkEvent::Inbound { part, ack } => (part, ack.unwrap()),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn inbound_ucs2_and_reversed_multipart() {
    let mut l = Link::start(None, |_| {}).await;
    l.bind_state("transceiver", 2).await;
    let port = l.smsc.control_port;
    let mo = move |body: Value| {
        tokio::spawn(async move { control(port, "POST", "/mo", Some(body)).await })
    };

    // UCS-2, one part.
    let call = mo(
        json!({"from": "+15550003333", "to": "+15550001111", "text": "Привет 👋", "ucs2": true}),
    );
    let (p, ack) = inbound(&mut l).await;
    assert_eq!(p.from, "+15550003333");
    assert_eq!(p.to, "+15550001111");
    assert_eq!(p.data_coding, 8);
    assert_eq!(from_ucs2(&p.payload), "Привет 👋");
    assert_eq!(p.concat, None);
    ack.send(true).unwrap();
    assert_eq!(call.await.unwrap()["acked"], 1);

    // GSM, three parts, sent in reverse order.
    let text = "part one @ home, part_two, and part three: 5$!";
    let call = mo(json!({"text": text, "parts": 3, "reverse": true}));
    let mut got = Vec::new();
    for _ in 0..3 {
        let (p, ack) = inbound(&mut l).await;
        ack.send(true).unwrap();
        got.push(p);
    }
    assert_eq!(call.await.unwrap()["acked"], 3);
    let concats: Vec<Concat> = got.iter().map(|p| p.concat.unwrap()).collect();
    assert_eq!(
        concats.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert!(
        concats
            .iter()
            .all(|c| c.total == 3 && c.reference == concats[0].reference)
    );
    let mut ordered: Vec<_> = got.iter().collect();
    ordered.sort_by_key(|p| p.concat.unwrap().index);
    let joined: Vec<u8> = ordered.iter().flat_map(|p| p.payload.clone()).collect();
    assert_eq!(from_septets(&joined), text);
    assert!(got.iter().all(|p| p.data_coding == 0));

    // UCS-2 in two parts, one part delivered twice.
    let call =
        mo(json!({"text": "Ünïcödé in two parts ✓", "ucs2": true, "parts": 2, "duplicate": true}));
    let mut got = Vec::new();
    for _ in 0..3 {
        let (p, ack) = inbound(&mut l).await;
        ack.send(true).unwrap();
        got.push(p);
    }
    assert_eq!(call.await.unwrap()["acked"], 3);
    assert_eq!(got[0].concat, got[2].concat);
    assert!(got.iter().all(|p| p.data_coding == 8));

    // Not stored: the SMSC gets a temporary error.
    let call = mo(json!({"text": "not stored"}));
    let (_, ack) = inbound(&mut l).await;
    ack.send(false).unwrap();
    let r = call.await.unwrap();
    assert_eq!(
        (r["acked"].clone(), r["nacked"].clone()),
        (json!(0), json!(1))
    );
    let st = l.smsc.stats().await;
    assert_eq!(st["mo_acked"], 7);
    assert_eq!(st["mo_nacked"], 1);
    l.stop().await;
}

#[tokio::test]
async fn transmitter_plus_receiver() {
    let mut l = Link::start(None, |c| c.bind = "transmitter+receiver".into()).await;
    let mut seen = (false, false);
    while seen != (true, true) {
        match l
            .next("BindState 2", |e| {
                matches!(e, LinkEvent::BindState { state: 2, .. })
            })
            .await
        {
            LinkEvent::BindState {
                role: "transmitter",
                ..
            } => seen.0 = true,
            LinkEvent::BindState {
                role: "receiver", ..
            } => seen.1 = true,
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(l.stats.bind_state_tx.load(Ordering::Relaxed), 2);
    assert_eq!(l.stats.bind_state_rx.load(Ordering::Relaxed), 2);
    let m = message("two binds", 0);
    l.send(&m).await;
    let id = l.accepted(m[0].message_id, 1).await;
    // The receipt comes on the receiver bind.
    assert_eq!(l.receipt(&id).await, (MessageStatus::Delivered, None));
    assert_eq!(l.smsc.stats().await["binds"], 2);
    l.stop().await;
    assert_eq!(l.smsc.stats().await["unbinds"], 2);
}

#[tokio::test]
async fn silent_smsc_is_detected_by_enquire_link() {
    let mut l = Link::start(None, |c| {
        c.enquire_link_secs = 1;
        c.response_timeout_secs = 2;
    })
    .await;
    l.bind_state("transceiver", 2).await;
    let smsc = &l.smsc;
    wait_until("an enquire_link answered", async || {
        smsc.stats().await["enquire_links"].as_u64().unwrap() >= 1
    })
    .await;
    l.smsc.mode(json!({"silent": true})).await;
    let t = Instant::now();
    l.bind_state("transceiver", 0).await;
    let took = t.elapsed();
    // 1 s of silence, then 10 s without an answer.
    assert!(
        took >= Duration::from_secs(9) && took <= Duration::from_secs(14),
        "{took:?}"
    );
    l.smsc.mode(json!({"silent": false})).await;
    l.bind_state("transceiver", 2).await;
    let m = message("alive again", 0);
    l.send(&m).await;
    l.accepted(m[0].message_id, 1).await;
    l.stop().await;
}
