//! The HTTP layer: the router, the state every handler shares, the extractors that check
//! credentials, and the one error type. Handlers are thin: parse, ask the subsystem
//! (`crate::calls`, `crate::store`, the SFU), map the result.
//!
//! - `api.rs`: call-create, call-end, `/api/v1` (calls, tokens, consent, downloads),
//!   `/openapi.json` (`openapi.json`), `/dev/token`; `upload.rs`: the PBX's recording-upload.
//! - `ws.rs`: one WebSocket signaling session: the `signaling` state machine driving a `media`
//!   participant. `whip.rs`: WHIP publish and WHEP subscribe.
//! - `recording.rs`: the per-room recording switch.
//! - `metrics.rs`: `/healthz`, `/readyz`, Prometheus `/metrics`. `web.rs`: the demo page and
//!   `commhub.js`, embedded in the binary.
//! - `extract.rs`: the API key and PBX token extractors. `error.rs`: [`AppError`].

pub mod api;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod recording;
pub mod sms;
pub mod upload;
pub mod web;
pub mod whip;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use media::Sfu;
use tokio::sync::watch;

pub use error::AppError;

use crate::auth::TokenKey;
use crate::config::Config;
use crate::store::writer::StoreHandle;

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    pub sfu: Sfu,
    pub cfg: Arc<Config>,
    /// Flips to true when shutdown begins.
    pub shutdown: watch::Receiver<bool>,
    pub ready: Arc<AtomicBool>,
    pub started: Instant,
    pub recorders: crate::recording::Recorders,
    pub calls: crate::calls::Calls,
    pub store: StoreHandle,
    pub tokens: TokenKey,
    /// The SIP bridge, when `[sip] enabled` (started with the server).
    pub sip: Option<crate::sip::Sip>,
    /// The SMS gateway (started with the server; `sms.mode = off` still lists messages).
    pub sms: Option<crate::sms::gateway::Sms>,
}

fn sms_routes(state: &AppState) -> Router<AppState> {
    let json_limit = state.cfg.api.max_json_bytes;
    // Media travel base64 in the JSON body: room for every item at the size limit.
    let media = (state.cfg.sms.mms_media_max_mb as usize)
        .saturating_mul(1024 * 1024 * 4 / 3 + 4)
        .saturating_mul(crate::sms::carrier::MAX_MEDIA);
    Router::new()
        .route(
            "/functions/v1/sms-send",
            post(sms::sms_send).layer(DefaultBodyLimit::max(json_limit.max(media + 65_536))),
        )
        .route(
            "/functions/v1/sms-webhook-mo",
            post(sms::webhook_mo).layer(DefaultBodyLimit::max(json_limit)),
        )
        .route(
            "/functions/v1/sms-webhook-dlr",
            post(sms::webhook_dlr).layer(DefaultBodyLimit::max(json_limit)),
        )
        .route("/api/v1/sms/messages", get(sms::list_messages))
        .route("/api/v1/sms/messages/{id}", get(sms::get_message))
        .route("/api/v1/sms/conversations", get(sms::list_conversations))
        .route("/sms-media/{*key}", get(sms::media))
}

/// The HTTP router.
pub fn app(state: AppState) -> Router {
    let body_limit = state.cfg.server.max_body_bytes;
    Router::new()
        .route("/", get(web::index))
        .route("/commhub.js", get(web::client_js))
        .route("/ws", get(ws::upgrade))
        .route("/whip/{room}", post(whip::whip_post))
        .route(
            "/whip/{room}/{participant}",
            axum::routing::delete(whip::whip_delete).patch(whip::not_supported),
        )
        .route("/whep/{room}/{participant}", post(whip::whep_post))
        .route(
            "/whep/{room}/{participant}/{subscriber}",
            axum::routing::delete(whip::whep_delete).patch(whip::not_supported),
        )
        .route(
            "/api/v1/rooms/{room}/recording",
            post(recording::set_recording).get(recording::get_recording),
        )
        .merge(api::routes(&state))
        .merge(sms_routes(&state))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        .route("/metrics", get(metrics::metrics))
        .fallback(web::not_found)
        // Bodies up to twice the limit reach the handlers, which answer 413 in JSON; beyond
        // that the framework refuses the upload itself.
        .layer(DefaultBodyLimit::max(body_limit.saturating_mul(2)))
        .with_state(state)
}
