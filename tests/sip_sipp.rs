//! The SIP bridge against sipp (Debian `sip-tester`), a SIP tool this project did not write:
//! inbound calls by call id with RTP from its pcaps (PCMA speech at 30 ms, then RFC 4733 digit
//! 1), a CANCEL before the answer, bad requests, and outbound calls to a sipp UAS acting as the
//! trunk (answer with RTP echo, 486 busy). sipp plays pcaps through a raw socket: it needs
//! root, which CI has.

mod common;

use std::path::Path;
use std::time::Duration;

use commhub::calls::NewCall;
use commhub::server::ServerHandle;
use common::eventually;
use common::sipp::{free_udp_port, scenario, sipp, sipp_dir, spawn_sipp, tmpdir, trunk_args};
use uuid::Uuid;

async fn new_call(srv: &ServerHandle, kind: &str, direction: &str, to: Option<&str>) -> Uuid {
    let (call, _) = srv
        .state
        .calls
        .create(NewCall {
            kind: kind.into(),
            direction: direction.into(),
            from_number: None,
            to_number: to.map(str::to_string),
            record: srv.state.cfg.recording.enabled,
        })
        .await;
    call.id
}

/// `sox FILE -n remix N stats`: the channel's RMS level in dB.
fn channel_rms_db(file: &Path, channel: u32) -> f64 {
    let out = std::process::Command::new("sox")
        .arg(file)
        .args(["-n", "remix", &channel.to_string(), "stats"])
        .output()
        .expect("sox");
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.starts_with("RMS lev dB"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NEG_INFINITY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sipp_caller_is_recorded_on_its_channel_and_pressing_1_logs_consent() {
    let root = tmpdir("sip-rec");
    let r2 = root.clone();
    let srv = common::server(move |c| {
        c.recording.enabled = true;
        c.recording.storage_root = r2;
        // Only the leg's speech on the record: no announcement, the first beep only.
        c.recording.announcement = false;
        c.recording.beep_interval_ms = 60_000;
    })
    .await;
    let sip = srv.state.sip.clone().expect("SIP is on by default");
    let call = new_call(&srv, "pstn", "inbound", Some("+15551230000")).await;
    let dir = sipp_dir();
    let (code, log) = sipp(
        &dir,
        &[
            sip.local_addr().to_string(),
            "-sn".into(),
            "uac_pcap".into(),
            "-s".into(),
            call.to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-mp".into(),
            free_udp_port().to_string(),
            "-m".into(),
            "1".into(),
        ],
    )
    .await;
    assert_eq!(code, 0, "sipp uac_pcap: {log}");

    let store = srv.state.store.store.clone();
    let mut consent = Vec::new();
    let ok = eventually(Duration::from_secs(15), || {
        consent = futures_block(store.consent_events(&call)).unwrap_or_default();
        consent.iter().any(|c| c.kind == "dtmf_1")
    })
    .await;
    assert!(ok, "a dtmf_1 consent row: {consent:?}");
    let d1: Vec<_> = consent.iter().filter(|c| c.kind == "dtmf_1").collect();
    assert_eq!(d1.len(), 1, "logged once: {consent:?}");
    assert_eq!(d1[0].source, "pbx");
    let parts = store.participants(&call).await.expect("participants");
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(
        (parts[0].kind.as_str(), parts[0].role.as_str()),
        ("pstn", "pstn")
    );
    assert_eq!(d1[0].participant_id, Some(parts[0].id));
    // The leave is written through the store queue: wait for it, not just for the consent.
    let left = eventually(Duration::from_secs(10), || {
        futures_block(store.participants(&call))
            .map(|p| p.first().is_some_and(|x| x.left_at.is_some()))
            .unwrap_or(false)
    })
    .await;
    assert!(left, "the leg left at sipp's BYE");

    let mut recs = Vec::new();
    let ok = eventually(Duration::from_secs(30), || {
        recs = futures_block(store.recordings(&call)).unwrap_or_default();
        recs.iter().any(|r| r.status == "ready")
    })
    .await;
    assert!(ok, "the recording is ready: {recs:?}");
    let flac = root.join(recs[0].flac_key.as_deref().expect("flac key"));
    let secs = recs[0].duration_sec.unwrap_or(0.0);
    assert!(secs > 7.0, "7 s of speech, then the digit: {secs} s");
    let (left, right) = (channel_rms_db(&flac, 1), channel_rms_db(&flac, 2));
    // sipp's speech is on the other-side channel (2); channel 1 holds only the first beep.
    assert!(right > -40.0, "speech on channel 2: {right} dB");
    assert!(
        right > left + 15.0,
        "channel 2 {right} dB vs channel 1 {left} dB"
    );
    let c = srv
        .state
        .calls
        .live_call(commhub::domain::CallId(call))
        .await;
    assert!(
        c.is_none_or(|(_, ended)| ended),
        "the call ended with its only party"
    );
    // /metrics counts what happened.
    let (status, _, body) = common::curl(&[&format!("{}/metrics", srv.http_url())]);
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(value("commhub_sip_invites_total"), 1.0, "{text}");
    assert_eq!(value("commhub_sip_answered_total"), 1.0);
    assert_eq!(value("commhub_pstn_dtmf_in_total"), 1.0);
    assert!(
        value("commhub_pstn_rtp_in_total") > 200.0,
        "7 s of 30 ms packets"
    );
    assert_eq!(value("commhub_pstn_legs"), 0.0, "the leg has ended");
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

/// Run a store future to completion from a sync closure (the tests run multi-threaded).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// sipp arguments for one call from `scenario` to `service` at the server.
fn uac(srv: &ServerHandle, scenario_file: &str, service: &str, extra: &[&str]) -> Vec<String> {
    let sip = srv.state.sip.clone().expect("SIP on");
    let mut a: Vec<String> = vec![
        sip.local_addr().to_string(),
        "-sf".into(),
        scenario(scenario_file),
        "-s".into(),
        service.into(),
        "-i".into(),
        "127.0.0.1".into(),
        "-mi".into(),
        "127.0.0.1".into(),
        "-mp".into(),
        free_udp_port().to_string(),
        "-m".into(),
        "1".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_is_answered_recvonly_and_the_session_timer_is_granted() {
    let srv = common::server(|_| {}).await;
    let call = new_call(&srv, "webrtc", "internal", None).await;
    let dir = tmpdir("sipp-hold");
    let (code, log) = sipp(&dir, &uac(&srv, "uac_hold.xml", &call.to_string(), &[])).await;
    assert_eq!(code, 0, "uac_hold: {log}");
    let parts = srv
        .state
        .store
        .store
        .participants(&call)
        .await
        .expect("rows");
    assert_eq!(parts.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_vanishes_is_hung_up_after_the_rtp_timeout() {
    let srv = common::server(|c| c.sip.rtp_timeout_secs = 2).await;
    let call = new_call(&srv, "webrtc", "internal", None).await;
    let dir = tmpdir("sipp-vanish");
    let t0 = std::time::Instant::now();
    let (code, log) = sipp(&dir, &uac(&srv, "uac_vanish.xml", &call.to_string(), &[])).await;
    assert_eq!(code, 0, "uac_vanish (expects our BYE): {log}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let stats = srv.state.sip.as_ref().expect("sip").pstn_stats().clone();
    assert_eq!(
        stats
            .rtp_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_inbound_call_rings_and_a_cancel_abandons_it() {
    let srv = common::server(|c| c.sip.inbound_numbers = vec!["+15557770000".into()]).await;
    let dir = tmpdir("sipp-cancel");
    let (code, log) = sipp(&dir, &uac(&srv, "uac_cancel.xml", "+15557770000", &[])).await;
    assert_eq!(code, 0, "uac_cancel: {log}");
    let filter = commhub::store::CallFilter {
        number: Some("+15557770000".into()),
        limit: 10,
        ..Default::default()
    };
    let store = srv.state.store.store.clone();
    let mut calls = Vec::new();
    let ok = eventually(Duration::from_secs(10), || {
        calls = futures_block(store.list_calls(&filter))
            .map(|(c, _)| c)
            .unwrap_or_default();
        calls.len() == 1 && calls[0].status == "ended"
    })
    .await;
    assert!(ok, "one inbound call, ended: {calls:?}");
    let c = &calls[0];
    assert_eq!((c.kind.as_str(), c.direction.as_str()), ("pstn", "inbound"));
    assert_eq!(c.from_number.as_deref(), Some("+15550001111"));
    assert_eq!(c.end_reason.as_deref(), Some("abandoned"));
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_precise_and_junk_is_survived() {
    let srv = common::server(|_| {}).await;
    let call = new_call(&srv, "webrtc", "internal", None).await;
    let dir = tmpdir("sipp-refused");
    let cases: Vec<(String, &str, &str, &str)> = vec![
        ("nobody".into(), "0", "1800", "404"),
        (Uuid::new_v4().to_string(), "0", "1800", "404"),
        ("+15550009999".into(), "0", "1800", "404"),
        (call.to_string(), "18", "1800", "488"),
        (call.to_string(), "0", "30", "422"),
    ];
    let template = std::fs::read_to_string(scenario("uac_refused.xml")).expect("scenario");
    for (service, pt, se, expect) in &cases {
        let file = dir.join(format!("refused_{expect}.xml"));
        std::fs::write(&file, template.replace("EXPECT", expect)).expect("write");
        let mut args = uac(
            &srv,
            "uac_refused.xml",
            service,
            &["-key", "pt", pt, "-key", "se", se],
        );
        args[2] = file.display().to_string();
        let (code, log) = sipp(&dir, &args).await;
        assert_eq!(code, 0, "{service} pt {pt} se {se} expects {expect}: {log}");
    }
    // Junk, truncated and oversized datagrams: no answer is due, nothing breaks.
    let addr = srv.state.sip.as_ref().expect("sip").local_addr();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let invite =
        "INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n";
    let mut junk: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02".to_vec(),
        b"hello".to_vec(),
        invite.as_bytes().to_vec(),
        format!("{invite}X-Big: {}\r\n\r\n", "a".repeat(7_000)).into_bytes(),
        vec![0xff; 1400],
    ];
    for i in 0..invite.len() {
        junk.push(invite.as_bytes()[..i].to_vec());
    }
    for j in &junk {
        let _ = sock.send_to(j, addr).await;
    }
    // Still answering: OPTIONS gets 200, and a real call still connects.
    let options = format!(
        "OPTIONS sip:commhub@{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{n}\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:commhub@{addr}>\r\nCall-ID: opt{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        local = sock.local_addr().expect("addr"),
        n = rand::random::<u32>()
    );
    sock.send_to(options.as_bytes(), addr).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let reply = loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("an answer to OPTIONS")
            .expect("recv");
        let t = String::from_utf8_lossy(&buf[..n]).to_string();
        if t.contains("OPTIONS") {
            break t;
        }
    };
    assert!(reply.starts_with("SIP/2.0 200"), "{reply}");
    assert!(reply.contains("INVITE"), "Allow lists INVITE: {reply}");
    // Over TCP: a 1 MB header and garbage, on connections that are then dropped.
    for junk in [
        format!(
            "INVITE sip:x@127.0.0.1 SIP/2.0\r\nX-Big: {}\r\n",
            "a".repeat(1 << 20)
        )
        .into_bytes(),
        vec![0u8; 70_000],
        b"SIP/2.0 200 OK\r\nContent-Length: 99999999\r\n\r\n".to_vec(),
    ] {
        use tokio::io::AsyncWriteExt;
        if let Ok(mut t) = tokio::net::TcpStream::connect(addr).await {
            let _ = t.write_all(&junk).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // OPTIONS over a fresh TCP connection is still answered.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut t = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let local = t.local_addr().expect("addr");
        let msg = format!(
            "OPTIONS sip:commhub@{addr};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKt{n}\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:commhub@{addr}>\r\nCall-ID: tcp{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            n = rand::random::<u32>()
        );
        t.write_all(msg.as_bytes()).await.expect("write");
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), t.read(&mut got))
            .await
            .expect("an answer over TCP")
            .expect("read");
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(text.starts_with("SIP/2.0 200"), "{text}");
    }
    let (code, log) = sipp(&dir, &uac(&srv, "uac_hold.xml", &call.to_string(), &[])).await;
    assert_eq!(code, 0, "a call after the junk: {log}");
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_dial_the_trunk_answer_with_media_and_end_with_bye() {
    let trunk_port = free_udp_port();
    let srv = common::server(move |c| {
        c.sip.trunk_uri = format!("sip:127.0.0.1:{trunk_port}");
    })
    .await;
    let dir = tmpdir("sipp-uas");
    let args = trunk_args(trunk_port, &["-sn", "uas", "-rtp_echo"]);
    let trunk = spawn_sipp(&dir, args).await;
    let (status, body) = common::api_post(
        &format!("{}/functions/v1/call-create", srv.http_url()),
        &serde_json::json!({"kind": "pstn", "direction": "outbound", "to": "+15557654321"}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["dial"]["status"], "dialing", "{body}");
    let call: Uuid = body["call"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let sip = srv.state.sip.clone().expect("sip");
    let stats = sip.pstn_stats().clone();
    // Our RTP reaches the trunk and comes back (sipp echoes it).
    let ok = eventually(Duration::from_secs(10), || {
        stats.rtp_in.load(std::sync::atomic::Ordering::Relaxed) > 50
    })
    .await;
    assert!(ok, "echoed RTP comes back: {stats:?}");
    let parts = srv
        .state
        .store
        .store
        .participants(&call)
        .await
        .expect("rows");
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].kind, "pstn");
    let (status, body) = common::api_post(
        &format!("{}/functions/v1/call-end", srv.http_url()),
        &serde_json::json!({"call_id": call}),
    );
    assert_eq!(status, 200, "{body}");
    let (code, log) = trunk.await.expect("join");
    assert_eq!(code, 0, "the trunk saw the whole call and our BYE: {log}");
    let c = srv
        .state
        .store
        .store
        .call(&call)
        .await
        .expect("row")
        .expect("call");
    assert_eq!(c.status, "ended");
    assert!(c.answered_at.is_none() || c.ended_at >= c.answered_at);
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_trunk_ends_the_call_as_busy() {
    let trunk_port = free_udp_port();
    let srv = common::server(move |c| {
        c.sip.trunk_uri = format!("sip:127.0.0.1:{trunk_port}");
    })
    .await;
    let dir = tmpdir("sipp-busy");
    let args = trunk_args(trunk_port, &["-sf", &scenario("uas_busy.xml")]);
    let trunk = spawn_sipp(&dir, args).await;
    let (status, body) = common::api_post(
        &format!("{}/functions/v1/call-create", srv.http_url()),
        &serde_json::json!({"kind": "pstn", "direction": "outbound", "to": "+15557654322"}),
    );
    assert_eq!(status, 201, "{body}");
    let call: Uuid = body["call"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let (code, log) = trunk.await.expect("join");
    assert_eq!(code, 0, "busy trunk: {log}");
    let store = srv.state.store.store.clone();
    let mut row = None;
    let ok = eventually(Duration::from_secs(10), || {
        row = futures_block(store.call(&call)).ok().flatten();
        row.as_ref().is_some_and(|c| c.status == "ended")
    })
    .await;
    assert!(ok, "{row:?}");
    assert_eq!(row.and_then(|c| c.end_reason).as_deref(), Some("busy"));
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_go_as_sip_info_when_the_trunk_has_no_telephone_event() {
    let trunk_port = free_udp_port();
    let srv = common::server(move |c| {
        c.sip.trunk_uri = format!("sip:127.0.0.1:{trunk_port}");
    })
    .await;
    let dir = tmpdir("sipp-info");
    let args = trunk_args(trunk_port, &["-sf", &scenario("uas_info.xml")]);
    let trunk = spawn_sipp(&dir, args).await;
    let base = srv.http_url();
    let (status, body) = common::api_post(
        &format!("{base}/functions/v1/call-create"),
        &serde_json::json!({"kind": "pstn", "direction": "outbound", "to": "+15557654323"}),
    );
    assert_eq!(status, 201, "{body}");
    let call = body["call"]["id"].as_str().expect("id").to_string();
    let sip = srv.state.sip.clone().expect("sip");
    let ok = eventually(Duration::from_secs(10), || {
        sip.stats()
            .outbound_answered
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert!(ok, "answered");
    // Bad keys are refused; good ones reach the leg.
    let (status, body) = common::api_post(
        &format!("{base}/api/v1/calls/{call}/dtmf"),
        &serde_json::json!({"digits": "5x"}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = common::api_post(
        &format!("{base}/api/v1/calls/{call}/dtmf"),
        &serde_json::json!({"digits": "5"}),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["legs"], 1, "{body}");
    let ok = eventually(Duration::from_secs(5), || {
        sip.pstn_stats()
            .dtmf_out
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert!(ok, "the INFO was answered");
    let (status, body) = common::api_post(
        &format!("{base}/functions/v1/call-end"),
        &serde_json::json!({"call_id": call}),
    );
    assert_eq!(status, 200, "{body}");
    let (code, log) = trunk.await.expect("join");
    assert_eq!(code, 0, "the trunk got INFO Signal=5 and the BYE: {log}");
    // A call without phone legs has nobody to send keys to.
    let (_, body) = common::api_post(
        &format!("{base}/functions/v1/call-create"),
        &serde_json::json!({}),
    );
    let other = body["call"]["id"].as_str().expect("id").to_string();
    let (status, body) = common::api_post(
        &format!("{base}/api/v1/calls/{other}/dtmf"),
        &serde_json::json!({"digits": "1"}),
    );
    assert_eq!(status, 409, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_with_credentials_is_challenged_and_checked() {
    let srv = common::server(|c| {
        c.sip.trunks = vec![commhub::config::TrunkConfig {
            name: "pbx".into(),
            sources: vec!["127.0.0.0/8".into()],
            username: "pbx".into(),
            password: "s3cret".into(),
        }];
    })
    .await;
    let call = new_call(&srv, "webrtc", "internal", None).await;
    let dir = tmpdir("sipp-auth");
    let sip = srv.state.sip.clone().expect("sip");
    let st = sip.stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (code, log) = sipp(
        &dir,
        &uac(
            &srv,
            "uac_auth.xml",
            &call.to_string(),
            &["-au", "pbx", "-ap", "s3cret"],
        ),
    )
    .await;
    assert_eq!(code, 0, "uac_auth: {log}");
    assert_eq!(
        (
            load(&st.challenged),
            load(&st.answered),
            load(&st.refused_auth)
        ),
        (1, 1, 0)
    );
    let (code, log) = sipp(
        &dir,
        &uac(
            &srv,
            "uac_auth.xml",
            &call.to_string(),
            &["-au", "pbx", "-ap", "wrong"],
        ),
    )
    .await;
    assert_eq!(code, 0, "uac_auth with a wrong password: {log}");
    assert_eq!(
        (
            load(&st.challenged),
            load(&st.answered),
            load(&st.refused_auth)
        ),
        (2, 1, 1)
    );
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sources_get_403_and_floods_get_503() {
    let srv = common::server(|c| {
        c.sip.trust_loopback = false;
        c.sip.trunks = vec![commhub::config::TrunkConfig {
            name: "carrier".into(),
            sources: vec!["192.0.2.0/24".into()],
            ..Default::default()
        }];
    })
    .await;
    let dir = tmpdir("sipp-403");
    let file = dir.join("refused_403.xml");
    let template = std::fs::read_to_string(scenario("uac_refused.xml")).expect("scenario");
    std::fs::write(&file, template.replace("EXPECT", "403")).expect("write");
    let mut args = uac(
        &srv,
        "uac_refused.xml",
        "+15550001234",
        &["-key", "pt", "0", "-key", "se", "1800"],
    );
    args[2] = file.display().to_string();
    let (code, log) = sipp(&dir, &args).await;
    assert_eq!(code, 0, "403 for a source no trunk lists: {log}");
    srv.stop().await.expect("stop");

    // A flood from one source: beyond invites_per_sec_per_source the answer is 503.
    let srv = common::server(|c| c.sip.invites_per_sec_per_source = 5).await;
    let file = dir.join("refused_404.xml");
    std::fs::write(&file, template.replace("EXPECT", "404")).expect("write");
    let mut args = uac(
        &srv,
        "uac_refused.xml",
        "nobody",
        &["-key", "pt", "0", "-key", "se", "1800"],
    );
    args[2] = file.display().to_string();
    let m = args.iter().position(|a| a == "-m").expect("-m");
    args[m + 1] = "60".into();
    args.extend(["-r".into(), "60".into()]);
    let _ = sipp(&dir, &args).await;
    let st = srv.state.sip.as_ref().expect("sip").stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        load(&st.refused_rate) >= 20,
        "503s: {}",
        load(&st.refused_rate)
    );
    assert!(load(&st.not_found) >= 5, "404s: {}", load(&st.not_found));
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_reaches_the_room_before_the_answer_and_no_answer_is_cancelled() {
    let trunk_port = free_udp_port();
    let srv = common::server(move |c| {
        c.sip.trunk_uri = format!("sip:127.0.0.1:{trunk_port}");
        c.sip.ring_timeout_secs = 5;
    })
    .await;
    let sip = srv.state.sip.clone().expect("sip");
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    // 183 with SDP and 3 s of speech, then 200.
    let dir = sipp_dir();
    let args = trunk_args(trunk_port, &["-sf", &scenario("uas_early.xml")]);
    let trunk = spawn_sipp(&dir, args).await;
    let base = srv.http_url();
    let (status, body) = common::api_post(
        &format!("{base}/functions/v1/call-create"),
        &serde_json::json!({"kind": "pstn", "direction": "outbound", "to": "+15557654324"}),
    );
    assert_eq!(status, 201, "{body}");
    let call = body["call"]["id"].as_str().expect("id").to_string();
    // Before the answer: the leg is in the room and its speech arrives.
    let stats = sip.pstn_stats().clone();
    let ok = eventually(Duration::from_secs(3), || load(&stats.rtp_in) > 20).await;
    assert!(ok, "early media flows before the answer");
    assert_eq!(load(&sip.stats().outbound_answered), 0, "not answered yet");
    let ok = eventually(Duration::from_secs(6), || {
        load(&sip.stats().outbound_answered) == 1
    })
    .await;
    assert!(ok, "answered after the early media");
    let (status, _) = common::api_post(
        &format!("{base}/functions/v1/call-end"),
        &serde_json::json!({"call_id": call}),
    );
    assert_eq!(status, 200);
    let (code, log) = trunk.await.expect("join");
    assert_eq!(code, 0, "uas_early: {log}");

    // Nobody answers: after ring_timeout_secs commhub cancels; the call ends no_answer.
    let args = trunk_args(trunk_port, &["-sf", &scenario("uas_noanswer.xml")]);
    let trunk = spawn_sipp(&dir, args).await;
    let (status, body) = common::api_post(
        &format!("{base}/functions/v1/call-create"),
        &serde_json::json!({"kind": "pstn", "direction": "outbound", "to": "+15557654325"}),
    );
    assert_eq!(status, 201, "{body}");
    let call: Uuid = body["call"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let (code, log) = trunk.await.expect("join");
    assert_eq!(code, 0, "uas_noanswer (expects our CANCEL): {log}");
    let store = srv.state.store.store.clone();
    let mut row = None;
    let ok = eventually(Duration::from_secs(10), || {
        row = futures_block(store.call(&call)).ok().flatten();
        row.as_ref().is_some_and(|c| c.status == "ended")
    })
    .await;
    assert!(ok, "{row:?}");
    assert_eq!(row.and_then(|c| c.end_reason).as_deref(), Some("no_answer"));
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_without_sdp_gets_our_offer_and_answers_in_the_ack() {
    let srv = common::server(|_| {}).await;
    let call = new_call(&srv, "webrtc", "internal", None).await;
    let dir = tmpdir("sipp-nosdp");
    let (code, log) = sipp(&dir, &uac(&srv, "uac_no_sdp.xml", &call.to_string(), &[])).await;
    assert_eq!(code, 0, "uac_no_sdp: {log}");
    let sip = srv.state.sip.clone().expect("sip");
    // Our RTP went to the address of the ACK's answer: the leg started with PCMU.
    let out = sip
        .pstn_stats()
        .rtp_out
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(out > 30, "RTP sent after the ACK's answer: {out}");
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_consent_mode_prompts_and_acts_on_the_answer_or_silence() {
    // The caller presses 1 (sipp's uac_pcap, about 8 s in): the prompt and the dtmf_1 are
    // stored, nothing else happens.
    let srv = common::server(|c| {
        c.recording.consent_mode = "dtmf".into();
        c.recording.dtmf_consent_timeout_secs = 10;
        c.recording.dtmf_no_consent = "hangup".into();
    })
    .await;
    let call = new_call(&srv, "pstn", "inbound", Some("+15551230001")).await;
    let dir = sipp_dir();
    let sip = srv.state.sip.clone().expect("sip");
    let args: Vec<String> = [
        sip.local_addr().to_string(),
        "-sn".into(),
        "uac_pcap".into(),
        "-s".into(),
        call.to_string(),
        "-i".into(),
        "127.0.0.1".into(),
        "-mi".into(),
        "127.0.0.1".into(),
        "-mp".into(),
        free_udp_port().to_string(),
        "-m".into(),
        "1".into(),
    ]
    .to_vec();
    let (code, log) = sipp(&dir, &args).await;
    assert_eq!(code, 0, "uac_pcap: {log}");
    let store = srv.state.store.store.clone();
    let mut rows = Vec::new();
    let ok = eventually(Duration::from_secs(10), || {
        rows = futures_block(store.consent_events(&call)).unwrap_or_default();
        rows.iter().any(|c| c.kind == "dtmf_1")
    })
    .await;
    assert!(ok, "{rows:?}");
    let notes: Vec<&str> = rows.iter().filter_map(|c| c.note.as_deref()).collect();
    assert_eq!(notes, vec!["press-1 consent prompt played"], "{rows:?}");
    srv.stop().await.expect("stop");

    // The caller says nothing: after the prompt and the timeout the leg is hung up
    // (dtmf_no_consent = "hangup") and the silence is stored.
    let srv = common::server(|c| {
        c.recording.consent_mode = "dtmf".into();
        c.recording.dtmf_consent_timeout_secs = 1;
        c.recording.dtmf_no_consent = "hangup".into();
    })
    .await;
    let call = new_call(&srv, "pstn", "inbound", Some("+15551230002")).await;
    let t0 = std::time::Instant::now();
    let (code, log) = sipp(&dir, &uac(&srv, "uac_vanish.xml", &call.to_string(), &[])).await;
    assert_eq!(code, 0, "uac_vanish (expects our BYE): {log}");
    let took = t0.elapsed();
    assert!(
        took > Duration::from_secs(3) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let store = srv.state.store.store.clone();
    let mut rows = Vec::new();
    let ok = eventually(Duration::from_secs(10), || {
        rows = futures_block(store.consent_events(&call)).unwrap_or_default();
        rows.iter().filter(|c| c.note.is_some()).count() == 2
    })
    .await;
    assert!(ok, "{rows:?}");
    assert!(
        rows.iter().any(|c| c
            .note
            .as_deref()
            .is_some_and(|n| n.contains("no key within 1 s") && n.ends_with("hangup"))),
        "{rows:?}"
    );
    assert!(!rows.iter().any(|c| c.kind == "dtmf_1"));
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

/// SIP over TLS: `openssl s_client` (a TLS client this project did not write) sends OPTIONS
/// and gets 200. (Debian's sipp is built without TLS.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_over_tls_answers_options() {
    let dir = tmpdir("sip-tls");
    let (cert, key) = commhub::cli::write_dev_cert(&dir, &[]).expect("dev cert");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let srv = common::server(move |c| {
        c.sip.tls_listen = Some(format!("127.0.0.1:{port}").parse().expect("addr"));
        c.sip.tls_cert = Some(cert);
        c.sip.tls_key = Some(key);
    })
    .await;
    let options = format!(
        "OPTIONS sip:commhub@127.0.0.1:{port};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKtls{n}\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:commhub@127.0.0.1>\r\nCall-ID: tls{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        n = rand::random::<u32>()
    );
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-quiet",
            "-ign_eof",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(options.as_bytes()).await.expect("write");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("SIP/2.0 200"), "over TLS: {text}");
    drop(stdin);
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_answer_the_trunks_digest_challenge() {
    let trunk_port = free_udp_port();
    let srv = common::server(move |c| {
        c.sip.trunk_uri = format!("sip:127.0.0.1:{trunk_port}");
        c.sip.trunk_username = "commhub".into();
        c.sip.trunk_password = "trunk-pw".into();
    })
    .await;
    let dir = tmpdir("sipp-uas-auth");
    let args = trunk_args(trunk_port, &["-sf", &scenario("uas_auth.xml")]);
    let trunk = spawn_sipp(&dir, args).await;
    let base = srv.http_url();
    let (status, body) = common::api_post(
        &format!("{base}/functions/v1/call-create"),
        &serde_json::json!({"kind": "pstn", "direction": "outbound", "to": "+15557654326"}),
    );
    assert_eq!(status, 201, "{body}");
    let call = body["call"]["id"].as_str().expect("id").to_string();
    let sip = srv.state.sip.clone().expect("sip");
    let ok = eventually(Duration::from_secs(10), || {
        sip.stats()
            .outbound_answered
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert!(ok, "answered after the 401");
    let (status, _) = common::api_post(
        &format!("{base}/functions/v1/call-end"),
        &serde_json::json!({"call_id": call}),
    );
    assert_eq!(status, 200);
    let (code, log) = trunk.await.expect("join");
    assert_eq!(code, 0, "sipp verified our digest and got our BYE: {log}");
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_joins_its_open_call_and_legs_are_capped() {
    let srv = common::server(|c| c.sip.max_legs = 1).await;
    // call-create with the customer's number: an INVITE to that number joins this call.
    let call = new_call(&srv, "pstn", "outbound", Some("+15551239876")).await;
    let dir = tmpdir("sipp-number");
    let first = tokio::spawn({
        let (d, a) = (dir.clone(), uac(&srv, "uac_hold.xml", "+15551239876", &[]));
        async move { sipp(&d, &a).await }
    });
    let store = srv.state.store.store.clone();
    let ok = eventually(Duration::from_secs(5), || {
        futures_block(store.participants(&call))
            .map(|p| p.len() == 1)
            .unwrap_or(false)
    })
    .await;
    assert!(ok, "the leg joined the call with that number");
    // The one leg allowed is up: another INVITE gets 503.
    let template = std::fs::read_to_string(scenario("uac_refused.xml")).expect("scenario");
    let file = dir.join("refused_503.xml");
    std::fs::write(&file, template.replace("EXPECT", "503")).expect("write");
    let mut args = uac(
        &srv,
        "uac_refused.xml",
        "+15551239876",
        &["-key", "pt", "0", "-key", "se", "1800"],
    );
    args[2] = file.display().to_string();
    let (code, log) = sipp(&dir, &args).await;
    assert_eq!(code, 0, "503 at sip.max_legs: {log}");
    let (code, log) = first.await.expect("join");
    assert_eq!(code, 0, "the first call: {log}");
    let st = srv.state.sip.as_ref().expect("sip").stats();
    assert_eq!(
        st.refused_capacity
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_end_while_an_inbound_call_rings_refuses_it() {
    let srv = common::server(|c| {
        c.sip.inbound_numbers = vec!["+15557770002".into()];
        c.sip.ring_timeout_secs = 30;
    })
    .await;
    let dir = tmpdir("sipp-ring-end");
    let template = std::fs::read_to_string(scenario("uac_refused.xml")).expect("scenario");
    let file = dir.join("refused_480.xml");
    std::fs::write(&file, template.replace("EXPECT", "480")).expect("write");
    let mut args = uac(
        &srv,
        "uac_refused.xml",
        "+15557770002",
        &["-key", "pt", "0", "-key", "se", "1800"],
    );
    args[2] = file.display().to_string();
    let t0 = std::time::Instant::now();
    let caller = tokio::spawn({
        let d = dir.clone();
        async move { sipp(&d, &args).await }
    });
    let filter = commhub::store::CallFilter {
        number: Some("+15557770002".into()),
        limit: 10,
        ..Default::default()
    };
    let store = srv.state.store.store.clone();
    let mut calls = Vec::new();
    let ok = eventually(Duration::from_secs(10), || {
        calls = futures_block(store.list_calls(&filter))
            .map(|(c, _)| c)
            .unwrap_or_default();
        calls.len() == 1
    })
    .await;
    assert!(ok, "the ringing call exists");
    let (status, body) = common::api_post(
        &format!("{}/functions/v1/call-end", srv.http_url()),
        &serde_json::json!({"call_id": calls[0].id, "reason": "agent_declined"}),
    );
    assert_eq!(status, 200, "{body}");
    let (code, log) = caller.await.expect("join");
    assert_eq!(code, 0, "480 after call-end: {log}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "not the 30 s ring timeout"
    );
    let c = store.call(&calls[0].id).await.expect("row").expect("call");
    assert_eq!(c.end_reason.as_deref(), Some("agent_declined"));
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hangs_up_phone_legs_with_bye() {
    let srv = common::server(|_| {}).await;
    let call = new_call(&srv, "webrtc", "internal", None).await;
    let dir = tmpdir("sipp-shutdown");
    // uac_vanish sends no RTP and waits for our BYE (the RTP timeout is 30 s here).
    let args = uac(&srv, "uac_vanish.xml", &call.to_string(), &[]);
    let caller = tokio::spawn({
        let d = dir.clone();
        async move { sipp(&d, &args).await }
    });
    let sip = srv.state.sip.clone().expect("sip");
    let ok = eventually(Duration::from_secs(5), || {
        sip.pstn_stats()
            .legs
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert!(ok, "the leg is up");
    let t0 = std::time::Instant::now();
    srv.stop().await.expect("stop");
    let (code, log) = caller.await.expect("join");
    assert_eq!(code, 0, "the caller got our BYE at shutdown: {log}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}
