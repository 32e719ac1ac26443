//! Recording end to end: the real server, two aiortc clients (agent 440 Hz, customer 880 Hz),
//! consent beeps every 3 s. The recording appears when they leave and is checked with decoders
//! this project did not write (flac, soxi, sox); each client hears the announcement and the
//! beeps. Then the crash cases: kill -9 mid-call and recovery at the next start; SIGTERM
//! mid-call finalises before exit.

mod common;

use common::{finish_py, python, repo, spawn_py};

const LIMIT: Duration = Duration::from_secs(90);

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("commhub-{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn client_args(
    url: &str,
    room: &str,
    name: &str,
    role: &str,
    tone: &str,
    secs: &str,
    out: &Path,
) -> Vec<String> {
    [
        "tests/clients/ws_client.py",
        "--url",
        url,
        "--room",
        room,
        "--name",
        name,
        "--role",
        role,
        "--tone",
        tone,
        "--duration",
        secs,
        "--expect-peers",
        "1",
        "--record",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(out.display().to_string()))
    .collect()
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is not installed ({e}); run scripts/setup-test-deps.sh"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Analyse a WAV with the Python helper (per-channel dominant frequency in windows).
fn analyze(wav: &Path, window: &str) -> Value {
    let out = std::process::Command::new(python())
        .args([
            "tests/clients/analyze.py",
            &wav.display().to_string(),
            "--skip",
            "0",
            "--window",
            window,
            "--probe",
            "1400",
        ])
        .current_dir(repo())
        .output()
        .expect("analyze");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("analyze output: {}", String::from_utf8_lossy(&out.stderr)))
}

fn find_files(root: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == ext) {
                    v.push(p);
                }
            }
        }
    }
    v.sort();
    v
}

/// Windows where the 1400 Hz consent tone holds a clear share of the energy.
fn beep_windows(ch: &Value) -> usize {
    ch["windows"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter(|x| x["ratio_1400"].as_f64().unwrap_or(0.0) > 0.25)
                .count()
        })
        .unwrap_or(0)
}

fn windows_with(ch: &Value, hz: f64) -> usize {
    ch["windows"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter(|x| (x["dominant_hz"].as_f64().unwrap_or(0.0) - hz).abs() < 15.0)
                .count()
        })
        .unwrap_or(0)
}

/// Check one finished recording: decoders agree, channels carry the right tones and the beeps.
fn check_recording(flac: &Path, min_secs: f64) -> f64 {
    let (ok, t) = run("flac", &["-t", "-s", &flac.display().to_string()]);
    assert!(ok, "flac -t failed: {t}");
    let (_, ch) = run("soxi", &["-c", &flac.display().to_string()]);
    assert_eq!(ch.trim(), "2");
    let (_, rate) = run("soxi", &["-r", &flac.display().to_string()]);
    assert_eq!(rate.trim(), "48000");
    let (_, d) = run("soxi", &["-D", &flac.display().to_string()]);
    let secs: f64 = d.trim().parse().expect("duration");
    assert!(
        secs >= min_secs,
        "recording is {secs} s, expected >= {min_secs}"
    );
    let mp3 = flac.with_extension("mp3");
    // The stream's duration minus its start time (LAME's encoder delay, announced in the
    // LAME/Xing tag) is the audio a player shows.
    let (ok, t) = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=duration,start_time",
            "-of",
            "json",
            &mp3.display().to_string(),
        ],
    );
    assert!(ok, "ffprobe mp3: {t}");
    let j: Value = serde_json::from_str(&t).expect("ffprobe json");
    let st = &j["streams"][0];
    let num = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let mp3_secs = num(&st["duration"]) - num(&st["start_time"]);
    assert!(
        (mp3_secs - secs).abs() < 0.05,
        "mp3 {mp3_secs} s vs flac {secs} s"
    );
    let wav = flac.with_extension("check.wav");
    let (ok, t) = run(
        "sox",
        &[&flac.display().to_string(), &wav.display().to_string()],
    );
    assert!(ok, "sox decode: {t}");
    let a = analyze(&wav, "1.0");
    let left = &a["per_channel"][0];
    let right = &a["per_channel"][1];
    assert!(
        windows_with(left, 440.0) >= 3,
        "left channel carries the agent's 440 Hz: {left}"
    );
    assert!(
        windows_with(right, 880.0) >= 3,
        "right channel carries the customer's 880 Hz: {right}"
    );
    let fine = analyze(&wav, "0.1");
    assert!(
        beep_windows(&fine["per_channel"][0]) >= 2,
        "beeps on the left channel"
    );
    assert!(
        beep_windows(&fine["per_channel"][1]) >= 2,
        "beeps on the right channel"
    );
    let _ = std::fs::remove_file(&wav);
    secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_leaves_flac_mp3_and_sidecar_and_clients_hear_consent() {
    let root = tmpdir("rec");
    let root2 = root.clone();
    let srv = common::server(move |c| {
        c.recording.enabled = true;
        c.recording.storage_root = root2;
        c.recording.beep_interval_ms = 3000;
    })
    .await;
    let mut events = srv.state.recorders.events();
    let url = srv.ws_url();
    let out_a = root.join("agent.wav");
    let out_b = root.join("customer.wav");
    let a = spawn_py(&client_args(
        &url, "recorded", "Agent", "agent", "440", "10", &out_a,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = spawn_py(&client_args(
        &url, "recorded", "Customer", "customer", "880", "10", &out_b,
    ));
    let ((ca, ja, ea), (cb, jb, eb)) = tokio::join!(finish_py(a, LIMIT), finish_py(b, LIMIT));
    assert_eq!(ca, 0, "agent client: {ja}\n{ea}");
    assert_eq!(cb, 0, "customer client: {jb}\n{eb}");

    // Each client heard the other party and the system source (announcement + beeps).
    for (j, other_hz) in [(&ja, 880.0), (&jb, 440.0)] {
        let received = j["received"].as_object().expect("received");
        assert!(
            received
                .values()
                .any(|r| (r["dominant_hz"].as_f64().unwrap_or(0.0) - other_hz).abs() < 10.0),
            "hears the other party: {j}"
        );
        let files = j["files"].as_object().expect("files");
        let mut heard_beep = false;
        let mut heard_speech = false;
        for (pid, f) in files {
            let r = &received[pid.as_str()];
            if (r["dominant_hz"].as_f64().unwrap_or(0.0) - other_hz).abs() < 10.0 {
                continue;
            }
            let an = analyze(Path::new(f.as_str().unwrap_or_default()), "0.1");
            heard_beep |= beep_windows(&an) >= 1;
            heard_speech |= an["seconds"].as_f64().unwrap_or(0.0) > 1.0;
        }
        assert!(heard_beep, "client heard a consent beep: {j}");
        assert!(heard_speech, "client heard the announcement: {j}");
    }

    // The room closed: the recording is finalised.
    let mut started = None;
    let mut beeps = 0;
    let mut announcement = 0;
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(commhub::recording::RecordingEvent::Started { recording_id, .. }) => {
                    started = Some(recording_id)
                }
                Ok(commhub::recording::RecordingEvent::Consent { kind, .. }) => {
                    if kind == "periodic_beep" {
                        beeps += 1
                    } else if kind == "ivr_announcement" {
                        announcement += 1
                    }
                }
                Ok(commhub::recording::RecordingEvent::Ready { summary, .. }) => return summary,
                Ok(commhub::recording::RecordingEvent::Failed { error, .. }) => {
                    panic!("recording failed: {error}")
                }
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("recording ready in time");
    assert_eq!(started.as_deref(), Some(ready.recording_id.as_str()));
    assert_eq!(announcement, 1, "one announcement event");
    assert!(beeps >= 2, "beeps every 3 s in a 10 s call: {beeps}");
    let flac = PathBuf::from(&ready.flac_path);
    assert!(
        flac.starts_with(root.join("call-recordings")),
        "{}",
        flac.display()
    );
    let secs = check_recording(&flac, 8.0);
    eprintln!("recording: {} ({secs:.2} s)", flac.display());
    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(&ready.sidecar_path).expect("sidecar"))
            .expect("json");
    let (_, sum) = run("sha256sum", &[&ready.flac_path]);
    assert_eq!(
        sum.split_whitespace().next(),
        Some(ready.flac_sha256.as_str())
    );
    assert!(
        sidecar.to_string().contains(&ready.flac_sha256),
        "{sidecar}"
    );
    assert!(
        find_files(&root, "journal").is_empty(),
        "journal removed after finish"
    );
    srv.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(root);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn spawn_server(root: &Path, port: u16) -> std::process::Child {
    let base = 20000 + (rand::random::<u16>() % 390) * 100;
    std::process::Command::new(env!("CARGO_BIN_EXE_commhub"))
        .args([
            "--config",
            "/dev/null",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--media-ports", &format!("{base}-{}", base + 99)])
        .env("COMMHUB_RECORDING__STORAGE_ROOT", root)
        .env("COMMHUB_RECORDING__BEEP_INTERVAL_MS", "3000")
        .env("COMMHUB_AUTH__ENABLED", "false")
        .env("COMMHUB_DATABASE__SQLITE_PATH", root.join("commhub.db"))
        .env("COMMHUB_DATABASE__OUTBOX_PATH", root.join("outbox.jsonl"))
        .env("COMMHUB_LOG__LEVEL", "info")
        // Its own SIP port: never the default 5060 another server may hold.
        .env("COMMHUB_SIP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn commhub")
}

async fn wait_up(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server did not come up on {port}");
}

/// A server process with a recorded call (agent 440 Hz, customer 880 Hz) 9 s in.
async fn call_in_progress(
    tag: &str,
    room: &str,
    secs: &str,
) -> (
    PathBuf,
    u16,
    std::process::Child,
    tokio::process::Child,
    tokio::process::Child,
) {
    let root = tmpdir(tag);
    let port = free_port();
    let server = spawn_server(&root, port);
    wait_up(port).await;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let agent = client_args(
        &url,
        room,
        "Agent",
        "agent",
        "440",
        secs,
        &root.join("a.wav"),
    );
    let customer = client_args(
        &url,
        room,
        "Customer",
        "customer",
        "880",
        secs,
        &root.join("b.wav"),
    );
    let (a, b) = (spawn_py(&agent), spawn_py(&customer));
    tokio::time::sleep(Duration::from_secs(9)).await;
    (root, port, server, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_call_is_recovered_at_the_next_start() {
    let (root, port, mut server, a, b) = call_in_progress("kill9", "crash", "14").await;
    server.kill().expect("kill -9");
    let _ = server.wait();
    drop(a);
    drop(b);
    assert_eq!(
        find_files(&root, "journal").len(),
        1,
        "a journal was left behind"
    );
    assert!(
        find_files(&root, "json").is_empty(),
        "no sidecar: the recording was not finished"
    );
    let mut server = spawn_server(&root, port);
    wait_up(port).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while find_files(&root, "json").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
    let flacs = find_files(&root, "flac");
    assert_eq!(flacs.len(), 1, "recovered at start: {flacs:?}");
    let secs = check_recording(&flacs[0], 7.0);
    eprintln!("recovered {secs:.2} s");
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_call_finalises_before_exit() {
    let (root, _port, mut server, a, b) = call_in_progress("term", "term", "20").await;
    let (ok, t) = run("kill", &["-TERM", &server.id().to_string()]);
    assert!(ok, "{t}");
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "server did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
    drop(a);
    drop(b);
    let flacs = find_files(&root, "flac");
    assert_eq!(flacs.len(), 1, "{flacs:?}");
    assert!(
        find_files(&root, "journal").is_empty(),
        "finalised, no journal left"
    );
    check_recording(&flacs[0], 7.0);
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_is_switched_per_room_by_join_message_and_http() {
    let root = tmpdir("switch");
    let root2 = root.clone();
    let srv = common::server(move |c| {
        c.recording.enabled = true;
        c.recording.storage_root = root2;
    })
    .await;
    let mut events = srv.state.recorders.events();
    // Created with record: false: no recording, no system participant.
    let mut ws = common::Ws::connect(&srv.ws_url()).await.expect("connect");
    ws.send(serde_json::json!({"type":"join","room":"switch","display_name":"A","role":"agent","record":false}))
        .await
        .expect("send");
    let joined = ws.expect("joined").await.expect("joined");
    assert_eq!(joined["participants"].as_array().map(Vec::len), Some(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(srv.state.recorders.active("switch").is_none());

    // Mid-call over signaling.
    ws.send(serde_json::json!({"type":"set_recording","enabled":true}))
        .await
        .expect("send");
    let started = ws.expect("recording_started").await.expect("started");
    let id = started["recording_id"].as_str().expect("id").to_string();
    assert_eq!(
        srv.state.recorders.active("switch").as_deref(),
        Some(id.as_str())
    );

    // Off over HTTP.
    let (status, body) = common::http(
        "POST",
        &format!("{}/api/v1/rooms/switch/recording", srv.http_url()),
        "application/json",
        r#"{"enabled": false}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stopped = ws.expect("recording_stopped").await.expect("stopped");
    assert_eq!(stopped["recording_id"], id.as_str());
    assert_eq!(stopped["reason"], "requested");
    assert!(srv.state.recorders.active("switch").is_none());
    // Its files were finalised.
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(commhub::recording::RecordingEvent::Ready { summary, .. }) =
                events.recv().await
            {
                return summary;
            }
        }
    })
    .await
    .expect("ready");
    assert_eq!(ready.recording_id, id);
    assert!(Path::new(&ready.sidecar_path).exists());
    // Bad bodies are refused.
    let (status, _) = common::http(
        "POST",
        &format!("{}/api/v1/rooms/switch/recording", srv.http_url()),
        "application/json",
        r#"{"enabled": "yes"}"#,
    )
    .await;
    assert_eq!(status, 400);
    srv.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(root);
}
