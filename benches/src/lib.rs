//! # commhub-benches
//!
//! Load generation and measurement for commhub, and the same load against Janus.
//!
//! ## Layout
//! - `client.rs`: a webrtc-rs client of commhub's `/ws` protocol (also used by the integration
//!   tests), with [`client::MediaHooks`] to choose what it sends and where received packets go.
//! - `janus.rs`: the same participant against a Janus VideoRoom (Janus WebSocket API).
//! - `stamp.rs`: the media: a tone encoded once with libopus, replayed, each packet stamped
//!   (sender, sequence, send time) in its Opus padding, so it stays valid Opus.
//! - `measure.rs`: latency histogram, send/receive counters, per-stream loss accounting.
//! - `procstat.rs`: CPU time and RSS of a process from /proc.
//! - `light.rs`: the light generator's media engine (`load --light`): webrtc-rs joins, then one
//!   thread sends and receives every participant's SRTP itself; it also carries the plain-UDP
//!   participants of the floor (`load --target floor`, `bin/floor.rs`: a null forwarder).
//! - `plot.rs`: the PNG of throughput, CPU and latency against load.
//! - `bin/load.rs`: the load generator (`--target commhub|janus`, ramp, duration, capacity
//!   search, smoke mode, JSON and PNG output). `benches/*.rs`: criterion micro-benchmarks.
//!   `compare.sh` (commhub vs Janus), `janus.sh` (a loopback Janus), `smoke.sh` (CI smoke run),
//!   `profile.sh` (perf under load): the scripts around it; `BENCHMARKS.md` at the repository
//!   root has the method and the figures.

pub mod client;
pub mod janus;
pub mod light;
pub mod measure;
pub mod plot;
pub mod procstat;
pub mod stamp;
