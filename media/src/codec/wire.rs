//! A leg's wire codec at the leg's own sample rate (8 kHz for G.711, 16 kHz for G.722, 48 kHz
//! for Opus): the leg mixes at that rate and libopus encodes from and decodes to it, so no
//! resampler sits on a leg's path.

use audio_codec::{Decoder as _, Encoder as _};

use super::g711;

/// The codecs a leg can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireKind {
    Pcmu,
    Pcma,
    G722,
    Opus,
}

impl WireKind {
    /// Samples per second the leg's audio runs at.
    pub fn sample_rate(self) -> u32 {
        match self {
            WireKind::Pcmu | WireKind::Pcma => 8_000,
            WireKind::G722 => 16_000,
            WireKind::Opus => 48_000,
        }
    }

    /// The RTP clock (G.722's is 8000 by RFC 3551).
    pub fn clock_rate(self) -> u32 {
        match self {
            WireKind::Opus => 48_000,
            _ => 8_000,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WireKind::Pcmu => "PCMU",
            WireKind::Pcma => "PCMA",
            WireKind::G722 => "G722",
            WireKind::Opus => "opus",
        }
    }
}

enum State {
    G711,
    G722 {
        enc: Box<audio_codec::g722::G722Encoder>,
        dec: Box<audio_codec::g722::G722Decoder>,
    },
    Opus {
        enc: Box<opus::Encoder>,
        dec: Box<opus::Decoder>,
    },
}

/// Encoder and decoder of one leg.
pub struct WireCodec {
    kind: WireKind,
    state: State,
    scratch: Vec<i16>,
}

/// A payload that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable {0} payload")]
pub struct DecodeError(pub &'static str);

impl WireCodec {
    pub fn new(kind: WireKind) -> Result<WireCodec, String> {
        let state = match kind {
            WireKind::Pcmu | WireKind::Pcma => State::G711,
            WireKind::G722 => State::G722 {
                enc: Box::new(audio_codec::g722::G722Encoder::new()),
                dec: Box::new(audio_codec::g722::G722Decoder::new()),
            },
            WireKind::Opus => {
                let mut enc =
                    opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
                        .map_err(|e| e.to_string())?;
                let _ = enc.set_bitrate(opus::Bitrate::Bits(32_000));
                let _ = enc.set_inband_fec(true);
                let dec =
                    opus::Decoder::new(48_000, opus::Channels::Mono).map_err(|e| e.to_string())?;
                State::Opus {
                    enc: Box::new(enc),
                    dec: Box::new(dec),
                }
            }
        };
        Ok(WireCodec {
            kind,
            state,
            scratch: Vec::new(),
        })
    }

    pub fn kind(&self) -> WireKind {
        self.kind
    }

    /// Decode one payload, appending its samples to `out`.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, DecodeError> {
        let before = out.len();
        match &mut self.state {
            State::G711 => {
                self.scratch.clear();
                match self.kind {
                    WireKind::Pcmu => g711::ulaw_decode_frame(payload, &mut self.scratch),
                    _ => g711::alaw_decode_frame(payload, &mut self.scratch),
                }
                out.extend_from_slice(&self.scratch);
            }
            State::G722 { dec, .. } => {
                out.resize(before + payload.len() * 2, 0);
                let n = dec
                    .decode_into(payload, &mut out[before..])
                    .map_err(|_| DecodeError("G722"))?;
                out.truncate(before + n);
            }
            State::Opus { dec, .. } => {
                out.resize(before + 5_760, 0);
                match dec.decode(payload, &mut out[before..], false) {
                    Ok(n) => out.truncate(before + n),
                    Err(_) => {
                        out.truncate(before);
                        return Err(DecodeError("Opus"));
                    }
                }
            }
        }
        Ok(out.len() - before)
    }

    /// Stand in for `samples` lost samples (Opus: its loss concealment; others: silence).
    pub fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        let before = out.len();
        if let State::Opus { dec, .. } = &mut self.state {
            out.resize(before + samples, 0);
            if let Ok(n) = dec.decode(&[], &mut out[before..], false) {
                out.truncate(before + n);
                return;
            }
            out.truncate(before);
        }
        out.resize(before + samples, 0);
    }

    /// Encode one packet time of samples at the leg's rate into `out` (cleared first).
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.clear();
        match &mut self.state {
            State::G711 => match self.kind {
                WireKind::Pcmu => g711::ulaw_encode_frame(pcm, out),
                _ => g711::alaw_encode_frame(pcm, out),
            },
            State::G722 { enc, .. } => {
                out.resize(pcm.len() / 2 + 1, 0);
                let n = enc.encode_into(pcm, out).unwrap_or(0);
                out.truncate(n);
            }
            State::Opus { enc, .. } => {
                out.resize(1_500, 0);
                let n = enc.encode(pcm, out).unwrap_or(0);
                out.truncate(n);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                ((2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin() * 8_000.0) as i16
            })
            .collect()
    }

    /// Goertzel power of `hz` relative to the signal's total power.
    fn share(x: &[i16], rate: u32, hz: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * hz / rate as f64;
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s = v as f64 + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let p = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        let e: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
        2.0 * p / (x.len() as f64 * e.max(1.0))
    }

    #[test]
    fn each_codec_round_trips_a_tone_at_its_rate_and_ptime() {
        for kind in [
            WireKind::Pcmu,
            WireKind::Pcma,
            WireKind::G722,
            WireKind::Opus,
        ] {
            let rate = kind.sample_rate();
            let mut c = WireCodec::new(kind).unwrap();
            let frame = (rate / 50) as usize;
            let input = tone(rate, 600.0, frame * 25);
            let mut out = Vec::new();
            let mut wire = Vec::new();
            for f in input.chunks(frame) {
                c.encode(f, &mut wire);
                assert!(!wire.is_empty(), "{kind:?}");
                let n = c.decode(&wire, &mut out).unwrap();
                assert_eq!(n, frame, "{kind:?}");
            }
            // Skip the codec's warm-up; the tone dominates what comes out.
            let tail = &out[out.len() / 2..];
            assert!(
                share(tail, rate, 600.0) > 0.8,
                "{kind:?}: {}",
                share(tail, rate, 600.0)
            );
            let mut lost = Vec::new();
            c.conceal(frame, &mut lost);
            assert_eq!(lost.len(), frame);
        }
        assert!(
            WireCodec::new(WireKind::Opus)
                .unwrap()
                .decode(&[0xff; 3], &mut Vec::new())
                .is_err()
        );
    }
}
