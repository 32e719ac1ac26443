//! # engine (prototype, issue 13 item 3)
//!
//! A media engine where all of a worker's peer connections share ONE UDP socket and are driven
//! from that worker's own loop, using the sans-IO `rtc` crate's `RTCPeerConnection` instead of
//! webrtc-rs's async `PeerConnection` (one socket, task and lock per connection). Nothing else
//! in the crate uses it yet.
//!
//! - `demux.rs`: which connection a datagram belongs to (RFC 7983 first byte, STUN USERNAME
//!   ufrag, learned remote addresses). Pure.
//! - `worker.rs`: [`Worker`]: one OS thread owning the socket, its connections and its rooms;
//!   commands on a channel, answers on oneshots; forwarding by `&mut self`.

pub mod demux;
pub mod worker;

pub use worker::{
    Counters, CountersSnapshot, EngineConfig, EngineError, PacketHook, PeerEvent, Worker,
    thread_cpu,
};
