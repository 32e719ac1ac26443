//! Two headless Chromium instances (Debian's chromium, driven by playwright-core) open the demo
//! page in one room, each with its own fake-microphone WAV; `getStats()` must show inbound Opus
//! packets and a non-zero audio level on both sides. Screenshots are kept under
//! `target/test-artifacts/`.

mod common;

use common::repo;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// A mono 16-bit 48 kHz WAV of a sine tone.
fn write_tone(path: &Path, hz: f64, seconds: f64) {
    let rate = 48_000u32;
    let n = (seconds * f64::from(rate)) as u32;
    let mut data = Vec::with_capacity(44 + n as usize * 2);
    data.extend_from_slice(b"RIFF");
    data.extend_from_slice(&(36 + n * 2).to_le_bytes());
    data.extend_from_slice(b"WAVEfmt ");
    data.extend_from_slice(&16u32.to_le_bytes());
    data.extend_from_slice(&1u16.to_le_bytes()); // PCM
    data.extend_from_slice(&1u16.to_le_bytes()); // mono
    data.extend_from_slice(&rate.to_le_bytes());
    data.extend_from_slice(&(rate * 2).to_le_bytes());
    data.extend_from_slice(&2u16.to_le_bytes());
    data.extend_from_slice(&16u16.to_le_bytes());
    data.extend_from_slice(b"data");
    data.extend_from_slice(&(n * 2).to_le_bytes());
    for i in 0..n {
        let t = f64::from(i) / f64::from(rate);
        let s = (0.5 * (2.0 * std::f64::consts::PI * hz * t).sin() * 32767.0) as i16;
        data.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, data).expect("write wav");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_browsers_hear_each_other_on_the_demo_page() {
    // With the shipped default: the room is recorded, so a `system` participant (the consent
    // announcement and beeps) is in the room too.
    // The demo as a developer runs it: auth on, dev mode gives the page its join tokens.
    let srv = common::server(|c| {
        c.recording.enabled = true;
        c.auth.enabled = true;
        c.auth.dev_mode = true;
    })
    .await;
    let out = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&out).expect("artifacts dir");
    let (wa, wb) = (out.join("tone-440.wav"), out.join("tone-880.wav"));
    write_tone(&wa, 440.0, 30.0);
    write_tone(&wb, 880.0, 30.0);
    let node = std::env::var("COMMHUB_TEST_NODE").unwrap_or_else(|_| "node".into());
    assert!(
        repo()
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is not installed: run scripts/setup-test-deps.sh"
    );
    let child = tokio::process::Command::new(node)
        .arg("chromium_test.mjs")
        .args([
            "--base",
            &srv.http_url(),
            "--room",
            "chromium-room",
            "--timeout",
            "100",
        ])
        .arg("--wav-a")
        .arg(&wa)
        .arg("--wav-b")
        .arg(&wb)
        .arg("--out")
        .arg(&out)
        .current_dir(repo().join("tests/browser"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let res = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("browser test finished in time")
        .expect("output");
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    let j: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        res.status.success(),
        "chromium test failed:\n{stdout}\n{stderr}"
    );
    for side in ["a", "b"] {
        let p = &j["pages"][side];
        eprintln!("page {side}: {p}");
        assert!(p["packetsReceived"].as_u64().unwrap_or(0) > 50, "{p}");
        assert!(p["audioLevel"].as_f64().unwrap_or(0.0) > 0.0, "{p}");
        assert_eq!(p["codec"], "audio/opus");
        let seen = p["participants_seen"].as_array().expect("participants");
        assert_eq!(seen.len(), 3, "A, B and the system source: {p}");
        assert!(seen.iter().any(|x| x["role"] == "system"), "{p}");
        assert!(Path::new(p["screenshot"].as_str().unwrap_or("")).exists());
        // Issue 13: the join (WebSocket open -> first packet from the other page) is printed,
        // not asserted. The server answers `a=setup:passive`, so Chromium is the DTLS client on
        // both connections. Chromium lists AES-CM-SHA1-80 before AES-GCM in its ClientHello
        // and rtc-dtls, as the DTLS server, takes the client's order: the cipher is printed.
        eprintln!(
            "chromium join {side}: first packet (ms after WebSocket open) {}",
            p["first_packet_ms"]
        );
        eprintln!("chromium timeline {side}: {}", p["timeline"]);
        for target in ["publish", "subscribe"] {
            let t = &p["transport"][target];
            eprintln!("chromium {side} {target}: {t}");
            assert!(
                t["srtpCipher"].as_str().unwrap_or("").starts_with("SRTP_"),
                "{target}: {t}"
            );
            assert_eq!(t["dtlsRole"], "client", "{target}: {t}");
        }
    }
    let snap = srv.state.sfu.stats().snapshot();
    assert!(snap.srtp_aead_gcm + snap.srtp_aes_cm >= 4, "{snap:?}");
    // The demo page's "Past calls" listed the call and loaded its recording.
    let h = &j["history"];
    eprintln!("history: {h}");
    assert!(h["audio"]["duration"].as_f64().unwrap_or(0.0) > 1.0, "{h}");
    let src = h["audio"]["src"].as_str().unwrap_or("");
    assert!(
        src.contains("/api/v1/recordings/") && src.ends_with("/mp3"),
        "{h}"
    );
    srv.stop().await.expect("stop");
}

/// The demo page's Phone card in Chromium: the dialer calls through a sipp trunk (answer, the
/// phone leg's audio arrives), the keypad sends a digit, the consent button logs `verbal_yes`,
/// Hang up ends the call; then an inbound phone call (sipp playing its pcap, then digit 1)
/// shows under "Incoming calls", the Join button answers it, and the page hears the digit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pages_phone_dials_keys_consents_and_answers_an_incoming_call() {
    use common::sipp::{free_udp_port, scenario, sipp, sipp_dir, trunk_args};
    use tokio::io::AsyncBufReadExt;

    let trunk_port = free_udp_port();
    let srv = common::server(move |c| {
        c.auth.enabled = true;
        c.auth.dev_mode = true;
        c.sip.trunk_uri = format!("sip:127.0.0.1:{trunk_port}");
        c.sip.inbound_numbers = vec!["+15557770001".into()];
    })
    .await;
    let sip = srv.state.sip.clone().expect("SIP on");
    let out = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&out).expect("artifacts dir");
    let wav = out.join("tone-660.wav");
    write_tone(&wav, 660.0, 60.0);
    let trunk_dir = sipp_dir();
    let trunk = tokio::spawn({
        let (d, a) = (
            trunk_dir.clone(),
            trunk_args(
                trunk_port,
                &["-sf", &scenario("uas_answer.xml"), "-rtp_echo"],
            ),
        );
        async move { sipp(&d, &a).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let node = std::env::var("COMMHUB_TEST_NODE").unwrap_or_else(|_| "node".into());
    let mut child = tokio::process::Command::new(node)
        .arg("phone_test.mjs")
        .args(["--base", &srv.http_url(), "--number", "+15557654321"])
        .arg("--wav")
        .arg(&wav)
        .arg("--out")
        .arg(&out)
        .current_dir(repo().join("tests/browser"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut last = Value::Null;
    let mut caller = None;
    let caller_dir = sipp_dir();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await
    {
        eprintln!("phone_test: {line}");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["stage"] == "ready" {
            // The caller: sipp's uac_pcap to a number that makes a new inbound call.
            let args: Vec<String> = [
                sip.local_addr().to_string(),
                "-sn".into(),
                "uac_pcap".into(),
                "-s".into(),
                "+15557770001".into(),
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
            let d = caller_dir.clone();
            caller = Some(tokio::spawn(async move { sipp(&d, &args).await }));
        }
        if v.get("ok").is_some() {
            last = v;
        }
    }
    let status = child.wait().await.expect("node");
    assert!(status.success() && last["ok"] == true, "phone test: {last}");
    let (code, log) = trunk.await.expect("trunk");
    assert_eq!(code, 0, "the trunk saw the call and its BYE: {log}");
    let (code, log) = caller.expect("caller started").await.expect("caller");
    assert_eq!(code, 0, "the inbound caller: {log}");
    assert_eq!(last["digitsHeard"], "1", "{last}");
    assert_eq!(last["legStats"]["codec"], "audio/opus", "{last}");
    // What the page did reached the server.
    let stats = sip.pstn_stats();
    assert_eq!(stats.dtmf_out.load(std::sync::atomic::Ordering::Relaxed), 1);
    let store = srv.state.store.store.clone();
    let outbound: uuid::Uuid = last["outboundCall"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let consent = store.consent_events(&outbound).await.expect("consent");
    assert!(
        consent
            .iter()
            .any(|c| c.kind == "verbal_yes" && c.source == "api"),
        "{consent:?}"
    );
    let inbound: uuid::Uuid = last["inboundCall"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let consent = store.consent_events(&inbound).await.expect("consent");
    assert!(consent.iter().any(|c| c.kind == "dtmf_1"), "{consent:?}");
    let _ = std::fs::remove_dir_all(&trunk_dir);
    let _ = std::fs::remove_dir_all(&caller_dir);
    srv.stop().await.expect("stop");
}

/// The demo page's SMS panel in Chromium, with commhub in SMPP mode against the simulated SMSC
/// (`tests/sms/smsc.js`) and dev mode (the page calls the API without a key): the composer
/// sends a message that goes to `delivered` in the thread; an MO reply injected at the
/// simulator shows as an inbound message; an MO "STOP" puts the `opted out` badge on the
/// conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pages_sms_panel_sends_sees_delivered_replies_and_opt_out() {
    use common::sms::{Smsc, metric, wait_for};
    use tokio::io::AsyncBufReadExt;

    const US: &str = "+15550001111";
    const THEM: &str = "+15550003333";
    const BODY: &str = "Hello from the demo page";
    const REPLY: &str = "Thanks, got it";

    let smsc = Smsc::start().await;
    let smsc_port = smsc.smpp_port;
    let srv = common::server(move |c| {
        c.auth.enabled = true;
        c.auth.dev_mode = true;
        c.sms.mode = commhub::config::SmsMode::Smpp;
        c.sms.brand = "Acme".into();
        c.sms.contact = "acme.example".into();
        c.sms.smpp.host = "127.0.0.1".into();
        c.sms.smpp.port = smsc_port;
        c.sms.smpp.system_id = "commhub".into();
        c.sms.smpp.password = "pw".into();
        c.sms.smpp.reconnect_min_ms = 200;
        c.sms.smpp.reconnect_max_ms = 1000;
    })
    .await;
    let base = srv.http_url();
    wait_for("bound to the simulator", Duration::from_secs(10), || {
        metric(&base, "commhub_sms_bind_state_tx") == 2.0
    })
    .await;
    assert!(
        repo()
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is not installed: run scripts/setup-test-deps.sh"
    );
    let out = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&out).expect("artifacts dir");
    let node = std::env::var("COMMHUB_TEST_NODE").unwrap_or_else(|_| "node".into());
    let mut child = tokio::process::Command::new(node)
        .arg("sms_test.mjs")
        .args(["--base", &base, "--from", US, "--to", THEM])
        .args(["--body", BODY, "--reply", REPLY, "--timeout", "100"])
        .arg("--out")
        .arg(&out)
        .current_dir(repo().join("tests/browser"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut last = Value::Null;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await
    {
        eprintln!("sms_test: {line}");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["stage"] == "delivered" {
            let r = smsc.mo(serde_json::json!({"from": THEM, "to": US, "text": REPLY}));
            assert_eq!(r["acked"], 1, "the reply MO: {r}");
        }
        if v["stage"] == "reply_shown" {
            let r = smsc.mo(serde_json::json!({"from": THEM, "to": US, "text": "STOP"}));
            assert_eq!(r["acked"], 1, "the STOP MO: {r}");
        }
        if v.get("ok").is_some() {
            last = v;
        }
    }
    let status = child.wait().await.expect("node");
    assert!(status.success() && last["ok"] == true, "sms test: {last}");
    assert_eq!(last["sent"]["status"], "delivered", "{last}");
    assert_eq!(last["composerCleared"], true, "{last}");
    assert_eq!(last["reply"]["status"], "received", "{last}");
    assert_eq!(last["optedOut"]["badge"], "opted out", "{last}");
    // What the page showed is what the server holds.
    let sent_id = last["sent"]["id"].as_str().expect("sent id");
    let m = common::api_get(&format!("{base}/api/v1/sms/messages/{sent_id}")).1;
    assert_eq!(
        (
            m["status"].as_str(),
            m["body"].as_str(),
            m["direction"].as_str()
        ),
        (Some("delivered"), Some(BODY), Some("outbound")),
        "{m}"
    );
    let texts: Vec<String> = smsc
        .messages()
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(texts.iter().any(|t| t == BODY), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.contains("unsubscribed")),
        "the STOP confirmation reached the SMSC: {texts:?}"
    );
    srv.stop().await.expect("stop");
}
