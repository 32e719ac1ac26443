//! # commhub-benches
//!
//! Load generation and measurement for commhub.
//!
//! ## Layout
//! - `client.rs`: a webrtc-rs client of the `/ws` protocol (also used by the integration tests).
//! - `bin/load.rs`: the load generator: rooms x participants against a running server, with
//!   join time, delivery and server CPU/RSS read from /proc.

pub mod client;
