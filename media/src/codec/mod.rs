//! Codecs and sample-rate conversion for PSTN legs (pure: samples in, samples out).
//!
//! - `g711.rs`: G.711 µ-law (PCMU) and A-law (PCMA), 8 kHz.
//! - `resample.rs`: integer-ratio polyphase resampling between the legs' rates (8 and 16 kHz)
//!   and the rooms' 48 kHz.
//!
//! Opus stays with libopus (the `opus` crate, used by the recorder).

pub mod g711;
pub mod resample;

pub use resample::Resampler;
