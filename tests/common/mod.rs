//! Shared test support: start the real server on 127.0.0.1:0; the webrtc-rs `/ws` client lives
//! in the benches crate (`commhub_benches::client`) so the load generator uses the same code.
#![allow(dead_code)]

use commhub::config::Config;
use commhub::server::{ServerHandle, start};

#[allow(unused_imports)]
pub use commhub_benches::client::*;

/// A config for tests: loopback, port 0, a random media port window, quick timeouts.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
    let base = 20000 + (rand::random::<u16>() % 390) * 100;
    cfg.media.port_min = base;
    cfg.media.port_max = base + 99;
    cfg.media.media_timeout_secs = 4;
    cfg.media.ice_disconnected_secs = 2;
    cfg.server.shutdown_grace_secs = 3;
    // Recording is on in the shipped config; tests of other features switch it off for
    // determinism, and the recording and browser tests switch it on.
    cfg.recording.enabled = false;
    let root = std::env::temp_dir().join(format!("commhub-test-{}", rand::random::<u32>()));
    cfg.recording.storage_root = root.clone();
    // The embedded SQLite store in the test's own directory; tests of the store and the API
    // switch to PostgreSQL (see `postgres_url`) and turn auth on.
    cfg.database.sqlite_path = root.join("commhub.db");
    cfg.database.outbox_path = root.join("outbox.jsonl");
    // Media tests join without tokens; the auth tests turn it on.
    cfg.auth.enabled = false;
    cfg
}

pub async fn server(tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    init_logs();
    let mut cfg = test_config();
    tweak(&mut cfg);
    start(cfg).await.expect("server starts")
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,webrtc=warn,rtc=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The repository root.
pub fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with aiortc: COMMHUB_TEST_PYTHON, else the repo's .venv (scripts/setup-test-deps.sh
/// makes it). Missing Python is a failure, not a skip: CI installs it.
pub fn python() -> String {
    if let Ok(p) = std::env::var("COMMHUB_TEST_PYTHON") {
        return p;
    }
    let venv = repo().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with aiortc: set COMMHUB_TEST_PYTHON or run scripts/setup-test-deps.sh"
    );
    venv.display().to_string()
}

/// Start a Python client script from the repo root.
pub fn spawn_py(args: &[String]) -> tokio::process::Child {
    tokio::process::Command::new(python())
        .args(args)
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python client")
}

/// Wait for a Python client: (exit code, the last JSON line it printed, its stderr).
pub async fn finish_py(
    child: tokio::process::Child,
    limit: std::time::Duration,
) -> (i32, serde_json::Value, String) {
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect("python client finished in time")
        .expect("python output");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub async fn run_py(
    args: &[String],
    limit: std::time::Duration,
) -> (i32, serde_json::Value, String) {
    finish_py(spawn_py(args), limit).await
}

/// A minimal HTTP/1.1 request over a TCP socket (keeps test dependencies small): the status
/// and the body.
pub async fn http(method: &str, url: &str, content_type: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let req = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// The JSON object in a (possibly chunked) HTTP body.
pub fn json_body(body: &str) -> serde_json::Value {
    match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => {
            serde_json::from_str(&body[a..=b]).unwrap_or(serde_json::Value::Null)
        }
        _ => serde_json::Value::Null,
    }
}
