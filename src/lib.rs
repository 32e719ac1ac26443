//! # commhub
//!
//! The server binary's library: configuration, the HTTP/WebSocket front end, and the wiring of
//! the `signaling`, `media` and `recorder` crates.
//!
//! ## Layout
//! - `cli.rs`: command line (`serve`, `config`), logging setup.
//! - `config.rs`: [`config::Config`]: defaults <- file <- `COMMHUB_*` environment <- flags.
//! - `server.rs`: [`server::start`] binds, serves (TLS when configured) and shuts down
//!   gracefully; [`server::app`] builds the router so tests can call it without a socket.
//! - `ws.rs`: one WebSocket signaling session: the `signaling` state machine driving a
//!   `media` participant.
//! - `whip.rs`: WHIP publish and WHEP subscribe endpoints.
//! - `metrics.rs`: Prometheus text exposition of the media counters.
//! - `recording.rs`: rooms' taps -> `recorder` recordings, consent audio played into rooms,
//!   recording events; `recording_api.rs`: the per-room recording switch over HTTP.
//! - `web.rs`: the demo page and `commhub.js`, embedded in the binary.
//! - `error.rs`: [`error::AppError`], the one HTTP error type (`{error: {code, message}}`).
//! - `redact.rs`: helpers that keep tokens and addresses out of logs.
//! - `store/`: [`store::Store`] (PostgreSQL or embedded SQLite, embedded migrations), the
//!   store task with its durable outbox (`writer.rs`, `outbox.rs`).
//! - `calls.rs`: rooms <-> calls; room and recording events -> store writes.
//! - `api.rs`: call-create, call-end, `/api/v1` (calls, tokens, consent, downloads),
//!   `/openapi.json` (`openapi.json`), `/dev/token`; `upload.rs`: recording-upload.
//! - `auth.rs`: join tokens (JWT HS256), TURN REST credentials, constant-time secrets.

pub mod api;
pub mod auth;
pub mod calls;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod recording;
pub mod recording_api;
pub mod redact;
pub mod server;
pub mod store;
pub mod upload;
pub mod web;
pub mod whip;
pub mod ws;
