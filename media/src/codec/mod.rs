//! Codecs and sample-rate conversion for PSTN legs (pure: samples in, samples out).
//!
//! - `g711.rs`: G.711 µ-law (PCMU) and A-law (PCMA), 8 kHz.
//! - `resample.rs`: integer-ratio polyphase resampling between the legs' rates (8 and 16 kHz)
//!   and the rooms' 48 kHz.
//! - `wire.rs`: [`WireCodec`], a leg's codec (PCMU, PCMA, G.722, Opus) at the leg's own rate;
//!   what the bridge runs.
//! - `leg.rs`: [`LegCodec`], a leg's payloads <-> 48 kHz frames at its packet time.
//!
//! Opus stays with libopus (the `opus` crate, used by the recorder).

pub mod g711;
pub mod leg;
pub mod resample;
pub mod wire;

pub use leg::{LegCodec, LegCodecKind, ROOM_RATE};
pub use resample::Resampler;
pub use wire::{WireCodec, WireKind};
