//! # commhub
//!
//! The server binary's library: configuration, the HTTP/WebSocket front end, the call
//! coordinator, the store, and the wiring of the `signaling`, `media` and `recorder` crates.
//!
//! ## Layout (one folder per subsystem; `server.rs` wires them)
//! - `cli.rs`: command line (`serve`, `config`, `migrate`, `recordings`, `dev-cert`), logging.
//! - `config.rs`: [`config::Config`]: defaults <- file <- `COMMHUB_*` / platform environment
//!   <- flags.
//! - `server.rs`: the one wiring point: builds the SFU, recorders, store task and coordinator,
//!   binds, serves (TLS when configured) and shuts down in order.
//! - `domain.rs`: typed ids (call, recording, participant, room) and the enumerations the
//!   database spells as text (status, kind, direction, role, consent kind, end reason).
//! - `calls/`: the coordinator that owns call lifecycle (`mod.rs`), its rules (`book.rs`, pure,
//!   unit-tested in `tests.rs`) and its lossless inbox (`queue.rs`).
//! - `recording/`: rooms' taps -> `recorder` recordings, consent audio played into rooms,
//!   recording events for the coordinator.
//! - `store/`: [`store::Store`] (PostgreSQL or embedded SQLite, embedded migrations), the store
//!   task with its durable outbox (`writer.rs`, `outbox.rs`).
//! - `http/`: router and [`http::AppState`], extractors, [`http::AppError`], and the handlers:
//!   call API and `/api/v1` (`api.rs`), recording-upload (`upload.rs`), signaling (`ws.rs`),
//!   WHIP/WHEP (`whip.rs`), the recording switch (`recording.rs`), health and metrics
//!   (`metrics.rs`), the demo page (`web.rs`), SMS endpoints (`sms.rs`).
//! - `sip/`: the SIP bridge (rsipstack): the endpoint and intake (`mod.rs`), inbound INVITEs
//!   (`inbound.rs`), outbound dialing (`outbound.rs`), an answered leg's dialog and media
//!   (`leg.rs`). Its pure rules are `signaling::sip`; its media `media::pstn`.
//! - `sms/`: SMS. Pure rules at the top (keywords, GSM 03.38 / UCS-2, segmentation with UDH,
//!   reassembly, receipts, carrier webhook bodies and signatures, pacing, MMS media) and in
//!   `smpp/` (framing, the bind session, PDUs); the IO in `gateway/` (the `Sms` handle, the
//!   sender queue, the SMPP and HTTP carrier links). Its rows: `store/sms.rs`.
//! - `auth.rs`: join tokens (JWT HS256), TURN REST credentials and the ICE-server list,
//!   constant-time secrets.
//! - `redact.rs`: helpers that keep tokens and addresses out of logs.
//!
//! Modules depend one way: `server` -> `http` -> `calls` -> `recording`, `store`, `domain`;
//! nothing below `http` knows about HTTP.

pub mod auth;
pub mod calls;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod recording;
pub mod redact;
pub mod server;
pub mod sip;
pub mod sms;
pub mod store;
