//! The load generator's CI smoke mode against the real server: a few seconds, a few
//! participants; it fails when nothing was forwarded. (Capacity runs are not part of the suite:
//! see BENCHMARKS.md.)

mod common;

use std::path::PathBuf;
use std::time::Duration;

fn load_binary() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let bin = target.join("debug/load");
    if !bin.exists() {
        let ok = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "commhub-benches", "--bin", "load"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "building the load generator failed");
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_smoke_run_forwards_packets() {
    // A production-like server: auth on; the generator signs its own join tokens.
    let srv = common::server(|c| {
        c.auth.enabled = true;
        c.auth.jwt_secret = "load-smoke-secret".into();
    })
    .await;
    let out = tokio::process::Command::new(load_binary())
        .args(["--smoke", "--url", &srv.ws_url()])
        .args(["--jwt-secret", "load-smoke-secret"])
        .args(["--server-pid", &std::process::id().to_string()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("smoke run finished in time")
        .expect("load ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "load --smoke failed");
    let forwarded = srv.state.sfu.stats().snapshot().packets_out;
    assert!(forwarded > 100, "the server forwarded {forwarded} packets");
    srv.stop().await.expect("stop");
}
