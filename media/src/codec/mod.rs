//! Codecs for phone legs (pure: samples in, bytes out).
//!
//! - `g711.rs`: G.711 µ-law (PCMU) and A-law (PCMA), 8 kHz, bit-exact against sox.
//! - `wire.rs`: [`WireCodec`], a leg's codec (PCMU, PCMA, G.722, Opus) at the leg's own rate.
//!
//! A leg runs at its codec's rate (8 kHz for G.711, 16 kHz for G.722, 48 kHz for Opus):
//! libopus encodes from and decodes to that rate, so no resampler sits on a leg's path.

pub mod g711;
pub mod wire;

pub use wire::{WireCodec, WireKind};
