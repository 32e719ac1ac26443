//! Binding, routing, TLS and graceful shutdown.
//!
//! [`app`] builds the router from an [`AppState`] (tests can drive it without a socket);
//! [`start`] binds the configured address (port 0 works: see [`ServerHandle::addr`]), serves
//! HTTP or HTTPS, and on [`ServerHandle::shutdown`] (or SIGTERM / Ctrl-C in `commhub serve`)
//! tells every participant, closes their peer connections, and stops within
//! `server.shutdown_grace_secs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use media::{PeerConfig, Sfu, SfuConfig};
use tokio::sync::watch;

use crate::auth::TokenKey;
use crate::config::Config;
pub use crate::http::AppState;
use crate::store::Store;
use crate::store::writer::StoreHandle;

/// Build the shared state, and the call coordinator to run (see [`crate::calls`]).
pub fn new_state(
    cfg: Config,
    shutdown: watch::Receiver<bool>,
    store: StoreHandle,
) -> anyhow::Result<(AppState, crate::calls::Coordinator)> {
    let sfu = Sfu::new(sfu_config(&cfg)).context("starting the media engine")?;
    let recorders = crate::recording::Recorders::new(sfu.clone(), recording_config(&cfg));
    let (calls, coordinator) = crate::calls::Calls::new(
        store.clone(),
        sfu.clone(),
        recorders.clone(),
        crate::calls::book::BookConfig {
            record_by_default: cfg.recording.enabled,
            abandon_after: Duration::from_secs(cfg.calls.abandon_after_secs),
            forget_after: Duration::from_secs(cfg.auth.token_ttl_secs),
            end_timeout: Duration::from_secs(5),
        },
    );
    let tokens = if cfg.auth.jwt_secret.is_empty() {
        TokenKey::random()
    } else {
        TokenKey::new(cfg.auth.jwt_secret.as_bytes())
    };
    let state = AppState {
        sfu,
        recorders,
        calls,
        store,
        tokens,
        cfg: Arc::new(cfg),
        shutdown,
        ready: Arc::new(AtomicBool::new(true)),
        started: Instant::now(),
        sip: None,
        sms: None,
    };
    Ok((state, coordinator))
}

/// Open the database (migrating it) and start the store task.
pub async fn open_store(
    cfg: &Config,
) -> anyhow::Result<(StoreHandle, tokio::task::JoinHandle<()>)> {
    let store = Store::open(&cfg.database).await?;
    tracing::info!(
        backend = store.backend(),
        "database ready (migrations applied)"
    );
    let d = &cfg.database;
    let (handle, task) = crate::store::writer::spawn(
        store,
        d.outbox_path.clone(),
        Duration::from_millis(d.retry_interval_ms),
        Duration::from_secs(d.connect_timeout_secs + 5),
    )
    .with_context(|| format!("opening the outbox {}", d.outbox_path.display()))?;
    Ok((handle, task))
}

/// Translate the server's config into the media crate's.
pub fn sfu_config(cfg: &Config) -> SfuConfig {
    let m = &cfg.media;
    SfuConfig {
        peer: PeerConfig {
            bind_ip: m.bind_ip,
            port_min: m.port_min,
            port_max: m.port_max,
            announced_ips: m.announced_ips.clone(),
            ice_disconnected: Duration::from_secs(m.ice_disconnected_secs),
            ice_failed: Duration::from_secs(m.media_timeout_secs),
            ice_lite: m.ice_lite,
        },
        max_participants_per_room: m.max_participants_per_room,
        subscriber_queue: m.subscriber_queue,
        tap_queue: m.tap_queue,
        audio_level_interval: Duration::from_millis(m.audio_level_interval_ms),
        media_timeout: Duration::from_secs(m.media_timeout_secs),
        negotiation_timeout: Duration::from_secs(10),
        shared: m.shared_socket.then(|| media::SharedConfig {
            port: m.shared_port,
            workers: if m.shared_workers == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                m.shared_workers
            },
        }),
    }
}

/// Translate the server's config into the recorder's.
pub fn recording_config(cfg: &Config) -> recorder::RecordingConfig {
    let r = &cfg.recording;
    recorder::RecordingConfig {
        storage_root: r.storage_root.clone(),
        beep: recorder::BeepConfig {
            interval: Duration::from_millis(r.beep_interval_ms),
            frequency_hz: r.beep_frequency_hz,
            duration: Duration::from_millis(r.beep_duration_ms),
            level_dbfs: r.beep_level_dbfs,
        },
        announcement: r.announcement.then(recorder::load_announcement),
        mp3_bitrate_kbps: r.mp3_bitrate_kbps,
        ..Default::default()
    }
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub tls: bool,
    pub state: AppState,
    shutdown_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ServerHandle {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub fn http_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Signaling URL, e.g. `ws://127.0.0.1:8080/ws`.
    pub fn ws_url(&self) -> String {
        format!("{}://{}/ws", if self.tls { "wss" } else { "ws" }, self.addr)
    }

    /// Begin graceful shutdown.
    pub fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    /// Shut down and wait until the server has stopped.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown();
        self.task.await.context("server task")?
    }

    /// Wait for the server to stop (after a shutdown from elsewhere).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task")?
    }
}

/// Bind and serve in the background.
pub async fn start(cfg: Config) -> anyhow::Result<ServerHandle> {
    let listener = std::net::TcpListener::bind(cfg.server.listen)
        .with_context(|| format!("binding {}", cfg.server.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (store, store_task) = open_store(&cfg).await?;
    let (mut state, coordinator) = new_state(cfg.clone(), shutdown_rx.clone(), store)?;
    let sip_cancel = tokio_util::sync::CancellationToken::new();
    if cfg.sip.enabled {
        state.sip = Some(
            crate::sip::Sip::start(
                &cfg,
                state.sfu.clone(),
                state.calls.clone(),
                sip_cancel.clone(),
            )
            .await?,
        );
    }
    state.sms = Some(
        crate::sms::gateway::Sms::start(
            &cfg,
            state.store.clone(),
            shutdown_rx.clone(),
            format!("http://{addr}"),
        )
        .await?,
    );
    // The coordinator runs until `calls.shutdown()` below; `abort` only cuts it short when the
    // finalisation itself hangs past its bound.
    let abort = tokio_util::sync::CancellationToken::new();
    let coordinator_task = tokio::spawn(coordinator.run(abort.clone()));
    crate::http::api::warn_about_auth(&cfg);
    let router = crate::http::app(state.clone());
    let handle = axum_server::Handle::new();
    let tls = cfg.server.tls_cert.is_some();

    let tls_config = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "loading TLS certificate {} and key {}",
                            cert.display(),
                            key.display()
                        )
                    })?,
            )
        }
        _ => None,
    };

    let serve_handle = handle.clone();
    let serve = async move {
        let svc = router.into_make_service();
        match tls_config {
            Some(tc) => {
                axum_server::from_tcp_rustls(listener, tc)?
                    .handle(serve_handle)
                    .serve(svc)
                    .await
            }
            None => {
                axum_server::from_tcp(listener)?
                    .handle(serve_handle)
                    .serve(svc)
                    .await
            }
        }
    };

    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    let calls = state.calls.clone();
    let store = state.store.clone();
    let sfu = state.sfu.clone();
    let ready = state.ready.clone();
    let mut rx = shutdown_rx;
    let task = tokio::spawn(async move {
        let server = tokio::spawn(serve);
        // Wait for the shutdown request.
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        tracing::info!("shutting down: telling clients and closing peers");
        ready.store(false, Ordering::Relaxed);
        sfu.shutdown();
        // Sessions send `bye` and leave; wait for the rooms to empty (bounded).
        if tokio::time::timeout(grace, sfu.wait_idle()).await.is_err() {
            tracing::warn!(
                live = sfu.live_sessions(),
                "sessions still open after the grace period"
            );
        }
        // Every recording is finalised (files complete, sidecar written) and every event of
        // the rooms and recordings has become a store op; what the database cannot take now
        // stays in the outbox. Each recording's stop is bounded (30 s), so this is too.
        if tokio::time::timeout(Duration::from_secs(45), calls.shutdown())
            .await
            .is_err()
        {
            tracing::error!("the call coordinator did not finish within 45 s");
            abort.cancel();
        }
        // Last writes, then the store task ends (its outbox file is the next start's).
        let pending = tokio::time::timeout(Duration::from_secs(10), store.close())
            .await
            .unwrap_or(usize::MAX);
        if pending > 0 {
            tracing::warn!(pending, "writes left in the outbox for the next start");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), coordinator_task).await;
        // The legs' BYEs went out while the rooms emptied; now the SIP endpoint stops.
        sip_cancel.cancel();
        drop(calls);
        drop(store);
        let _ = tokio::time::timeout(Duration::from_secs(5), store_task).await;
        handle.graceful_shutdown(Some(Duration::from_secs(1)));
        match tokio::time::timeout(grace + Duration::from_secs(2), server).await {
            Ok(Ok(r)) => r.context("HTTP server")?,
            Ok(Err(e)) => return Err(anyhow::anyhow!("HTTP server task: {e}")),
            Err(_) => tracing::warn!("HTTP server did not stop within the grace period"),
        }
        tracing::info!("stopped");
        Ok(())
    });
    tracing::info!(
        %addr,
        tls,
        media_ports = %format!("{}-{}", cfg.media.port_min, cfg.media.port_max),
        "commhub listening"
    );
    Ok(ServerHandle {
        addr,
        tls,
        state,
        shutdown_tx,
        task,
    })
}
