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
    cfg.recording.storage_root =
        std::env::temp_dir().join(format!("commhub-test-{}", rand::random::<u32>()));
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
