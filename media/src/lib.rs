//! # media
//!
//! The SFU: rooms of participants whose Opus audio is forwarded to each other, the taps that
//! hand a room's packets to other consumers (the recorder), and the adapter around webrtc-rs.
//!
//! ## Layout
//! - `room.rs`: [`RoomModel`], membership and who must be told what (pure).
//! - `forward.rs`: [`fan_out`] of one packet to subscriber queues and taps, and [`ConsumerSet`],
//!   a subscriber's producer -> output map with the SSRC/sequence/timestamp rewrite (pure).
//! - `rewrite.rs`: [`Rewriter`], one output stream's numbering (pure).
//! - `level.rs`: RFC 6464 audio levels and the active-speaker detector (pure).
//! - `tap.rs`: [`Tap`], bounded, never-blocking packet taps.
//! - `codec/`: G.711 µ-law/A-law, and [`codec::WireCodec`]: a phone leg's codec (PCMU, PCMA,
//!   G.722, Opus) at the leg's rate (pure).
//! - `dtmf.rs`: RFC 4733 telephone events -> digits, each once (pure).
//! - `jitter.rs`: a PSTN leg's fixed-delay jitter buffer: in order, one frame per ptime (pure).
//! - `mix.rs`: summing and saturating a phone leg's downlink mix (pure).
//! - `pstn/`: a phone leg's media engine: RTP (or a WebRTC peer) <-> its [`LegPort`] in a room,
//!   with latching, jitter playout, transcoding, mix-minus, pacing and RFC 4733 (`rtp.rs`:
//!   RTP headers).
//! - `stats.rs`: counters for `/metrics`.
//! - `ports.rs`: the UDP port range peer connections bind in.
//! - `peer.rs`: the webrtc-rs adapter: building peer connections, translating callbacks into
//!   channel events.
//! - `engine/`: prototype (issue 13): one worker thread per UDP socket driving the sans-IO `rtc`
//!   peer connections of all its participants, demultiplexed by ICE ufrag and remote address
//!   (`demux.rs`, pure) and forwarded in the worker's own loop (`worker.rs`). Not used yet.
//! - `sfu/`: [`Sfu`] (rooms) and its IO, one concern per file: `mod.rs` (joins, taps,
//!   shutdown, events), `rooms.rs` (a room's shared state), `participant.rs` ([`Participant`]
//!   handles: publish/subscribe negotiation), `io.rs` (publisher read loops, subscriber writer
//!   tasks, connection watchers), `negotiate.rs`, `whip.rs` (WHIP/WHEP), `system.rs`
//!   ([`SystemSource`]), `leg.rs` ([`LegPort`], a phone leg's place in a room) and
//!   `webrtc_leg.rs` (WebRTC media for a SIP leg).
//!
//! ## Contract
//! Only this crate touches webrtc-rs. Packets are forwarded with the payload untouched; each
//! destination gets its own SSRC with continuous sequence numbers and timestamps. Forwarding
//! never waits on a slow subscriber or tap: what does not fit in a bounded queue is dropped and
//! counted. No lock is held across an `.await`.

pub mod codec;
pub mod dtmf;
pub mod engine;
pub mod forward;
pub mod jitter;
pub mod level;
pub mod mix;
pub mod rewrite;
pub mod room;
pub mod stats;
pub mod tap;

pub use forward::{ConsumerSet, Fanout, MediaPacket, Routes, SinkMsg, SubscriberSink, fan_out};
pub use level::SpeakerDetector;
pub use rewrite::Rewriter;
pub use room::{LeaveReason, Notice, ParticipantId, ParticipantKind, ParticipantMeta, RoomModel};
pub use stats::{MediaStats, StatsSnapshot};
pub use tap::{Tap, TapPacket, TapReceiver};
pub mod peer;
pub mod ports;
pub mod pstn;
pub mod sfu;

pub use peer::{PeerConfig, PeerError};
pub use sfu::{
    LegPort, Participant, ParticipantEvent, RoomEvent, RoomEventSink, Sfu, SfuConfig, SfuError,
    SharedConfig, SubscribedTrack, SystemSource, Target, WebRtcMedia,
};
/// ICE candidate as exchanged with clients (`RTCIceCandidateInit`).
pub use webrtc::peer_connection::RTCIceCandidateInit as IceCandidateInit;
