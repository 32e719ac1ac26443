//! The SIP bridge against sipp (Debian `sip-tester`), a SIP tool this project did not write:
//! inbound calls by call id with RTP from its pcaps (PCMA speech at 30 ms, then RFC 4733 digit
//! 1), a CANCEL before the answer, bad requests, and outbound calls to a sipp UAS acting as the
//! trunk (answer with RTP echo, 486 busy). sipp plays pcaps through a raw socket: it needs
//! root, which CI has.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use commhub::calls::NewCall;
use commhub::server::ServerHandle;
use common::eventually;
use uuid::Uuid;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("commhub-{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// A directory with `pcap -> /usr/share/sip-tester`, as sipp's built-in uac_pcap expects.
fn sipp_dir() -> PathBuf {
    let d = tmpdir("sipp");
    std::os::unix::fs::symlink("/usr/share/sip-tester", d.join("pcap")).expect("symlink");
    d
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

async fn sipp(dir: &Path, args: &[String]) -> (i32, String) {
    let out = tokio::process::Command::new("sipp")
        .args(args)
        .args([
            "-nostdin",
            "-timeout",
            "60s",
            "-timeout_error",
            "-trace_err",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .expect("sipp runs (apt install sip-tester)");
    let mut errs = String::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with("_errors.log") {
                errs.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    let text = format!(
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr),
        errs
    );
    (out.status.code().unwrap_or(-1), text)
}

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
    assert!(parts[0].left_at.is_some(), "the leg left at sipp's BYE");

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
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await.expect("stop");
}

/// Run a store future to completion from a sync closure (the tests run multi-threaded).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
