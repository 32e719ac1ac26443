//! Shared test support: start the real server on 127.0.0.1:0; the webrtc-rs `/ws` client lives
//! in the benches crate (`commhub_benches::client`) so the load generator uses the same code.
#![allow(dead_code)]

pub mod sipp;
pub mod sms;

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
    // The media engine's workers on ephemeral ports (tests run side by side).
    cfg.media.shared_port = 0;
    // SIP on an ephemeral port (UDP and TCP share it); legs' RTP in a window of their own.
    cfg.sip.listen = "127.0.0.1:0".parse().expect("addr");
    let rtp = 40000 + (rand::random::<u16>() % 200) * 100;
    cfg.sip.rtp_port_min = rtp;
    cfg.sip.rtp_port_max = rtp + 99;
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
                .unwrap_or_else(|_| "info,webrtc=warn,rtc=warn,rsipstack=error".into()),
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

/// The PostgreSQL server tests use: `COMMHUB_TEST_DATABASE_URL` (scripts/test.sh sets it to
/// the local cluster that `.ci/run` starts), a role allowed to create databases.
pub fn postgres_admin_url() -> String {
    std::env::var("COMMHUB_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "COMMHUB_TEST_DATABASE_URL is not set: the store tests need a real PostgreSQL. \
             Run them through scripts/test.sh (after scripts/setup-test-deps.sh), or set it to \
             e.g. postgres://commhub:commhub@127.0.0.1:5432/postgres"
        )
    })
}

/// A fresh, empty database on the test PostgreSQL server; returns its URL.
pub async fn fresh_postgres() -> String {
    use sqlx::Executor;
    let admin = postgres_admin_url();
    let name = format!("commhub_test_{}", rand::random::<u64>());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL ({admin}): {e}"));
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create test database");
    pool.close().await;
    let (base, _) = admin.rsplit_once('/').expect("database URL with a path");
    format!("{base}/{name}")
}

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Point `cfg` at a fresh database of `backend`.
pub async fn use_backend(cfg: &mut Config, backend: Backend) {
    match backend {
        Backend::Sqlite => cfg.database.url.clear(),
        Backend::Postgres => cfg.database.url = fresh_postgres().await,
    }
}

/// An HTTP exchange through the `curl` command line (a client this project did not write).
/// It blocks: call it from a multi-threaded test runtime.
/// Returns status, headers (lowercased names) and body.
pub fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("commhub-curl-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (h, b) = (dir.join("h"), dir.join("b"));
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-S",
            "-o",
            b.to_str().expect("path"),
            "-D",
            h.to_str().expect("path"),
        ])
        .args(["-w", "%{http_code}", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl runs (apt install curl)");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let headers = std::fs::read_to_string(&h)
        .unwrap_or_default()
        .to_lowercase();
    let body = std::fs::read(&b).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (status, headers, body)
}

/// `curl` returning the body as JSON.
pub fn curl_json(args: &[&str]) -> (u16, serde_json::Value) {
    let (s, _, b) = curl(args);
    (
        s,
        serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
    )
}

/// The SHA-256 of a file by `sha256sum`.
pub fn sha256sum(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The API key the API tests configure (`auth.api_keys`).
pub const TEST_API_KEY: &str = "test-api-key-0123456789";

/// POST JSON to the API with [`TEST_API_KEY`], through curl.
pub fn api_post(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    curl_json(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {TEST_API_KEY}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &body.to_string(),
        url,
    ])
}

/// GET from the API with [`TEST_API_KEY`], through curl.
pub fn api_get(url: &str) -> (u16, serde_json::Value) {
    curl_json(&["-H", &format!("Authorization: Bearer {TEST_API_KEY}"), url])
}
