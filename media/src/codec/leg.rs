//! A PSTN leg's codec as the room sees it: frames of 48 kHz mono PCM in and out, the leg's
//! payloads on the wire. G.711 legs run at 8 kHz, so each direction goes through a resampler.

use super::Resampler;
use super::g711;

/// The codecs a leg can negotiate that this module encodes (G.722 and Opus come later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegCodecKind {
    /// G.711 µ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
}

impl LegCodecKind {
    pub fn payload_type(self) -> u8 {
        match self {
            LegCodecKind::Pcmu => 0,
            LegCodecKind::Pcma => 8,
        }
    }

    /// The RTP clock rate (and sample rate).
    pub fn clock_rate(self) -> u32 {
        8_000
    }

    pub fn name(self) -> &'static str {
        match self {
            LegCodecKind::Pcmu => "PCMU",
            LegCodecKind::Pcma => "PCMA",
        }
    }
}

/// Sample rate of rooms (and of the recorder).
pub const ROOM_RATE: u32 = 48_000;

/// Encoder and decoder state of one leg.
#[derive(Debug, Clone)]
pub struct LegCodec {
    kind: LegCodecKind,
    ptime_ms: u32,
    up: Resampler,
    down: Resampler,
    narrow: Vec<i16>,
}

impl LegCodec {
    /// `ptime_ms`: the packet time (10..=60 ms, a multiple of 10).
    pub fn new(kind: LegCodecKind, ptime_ms: u32) -> Option<LegCodec> {
        if !(10..=60).contains(&ptime_ms) || !ptime_ms.is_multiple_of(10) {
            return None;
        }
        Some(LegCodec {
            kind,
            ptime_ms,
            up: Resampler::new(kind.clock_rate(), ROOM_RATE)?,
            down: Resampler::new(ROOM_RATE, kind.clock_rate())?,
            narrow: Vec::new(),
        })
    }

    pub fn kind(&self) -> LegCodecKind {
        self.kind
    }

    pub fn ptime_ms(&self) -> u32 {
        self.ptime_ms
    }

    /// 48 kHz samples in one packet time.
    pub fn room_samples(&self) -> usize {
        (ROOM_RATE / 1_000 * self.ptime_ms) as usize
    }

    /// RTP timestamp units in one packet time.
    pub fn timestamp_step(&self) -> u32 {
        self.kind.clock_rate() / 1_000 * self.ptime_ms
    }

    /// A received payload (any length: the sender's ptime may differ) to 48 kHz samples.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        self.narrow.clear();
        match self.kind {
            LegCodecKind::Pcmu => g711::ulaw_decode_frame(payload, &mut self.narrow),
            LegCodecKind::Pcma => g711::alaw_decode_frame(payload, &mut self.narrow),
        }
        self.up.process(&self.narrow, out);
    }

    /// A lost frame: silence of one packet time, through the resampler so its state stays in
    /// step.
    pub fn conceal(&mut self, out: &mut Vec<i16>) {
        self.narrow.clear();
        self.narrow.resize((self.timestamp_step()) as usize, 0);
        let narrow = std::mem::take(&mut self.narrow);
        self.up.process(&narrow, out);
        self.narrow = narrow;
    }

    /// One packet time of 48 kHz samples to a payload.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        self.narrow.clear();
        self.down.process(pcm, &mut self.narrow);
        match self.kind {
            LegCodecKind::Pcmu => g711::ulaw_encode_frame(&self.narrow, out),
            LegCodecKind::Pcma => g711::alaw_encode_frame(&self.narrow, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn tone48(hz: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| ((2.0 * PI * hz * i as f64 / 48_000.0).sin() * 8_000.0) as i16)
            .collect()
    }

    /// Signal-to-noise of `y` against `x` at the best lag up to `max_lag`.
    fn snr(x: &[i16], y: &[i16], max_lag: usize) -> f64 {
        (0..max_lag)
            .map(|lag| {
                let n = x.len() - max_lag;
                let (mut s, mut e) = (0.0, 0.0);
                for i in 0..n {
                    let a = x[i] as f64;
                    let b = y[i + lag] as f64;
                    s += a * a;
                    e += (a - b) * (a - b);
                }
                10.0 * (s / e.max(1e-9)).log10()
            })
            .fold(f64::MIN, f64::max)
    }

    #[test]
    fn a_tone_crosses_a_g711_leg_both_ways_with_g711_quality() {
        for kind in [LegCodecKind::Pcmu, LegCodecKind::Pcma] {
            for ptime in [20, 30] {
                let mut tx = LegCodec::new(kind, ptime).expect("codec");
                let mut rx = LegCodec::new(kind, ptime).expect("codec");
                let input = tone48(440.0, 57_600);
                let mut back = Vec::new();
                for frame in input.chunks(tx.room_samples()) {
                    let mut payload = Vec::new();
                    tx.encode(frame, &mut payload);
                    assert_eq!(payload.len(), tx.timestamp_step() as usize);
                    rx.decode(&payload, &mut back);
                }
                assert_eq!(back.len(), input.len());
                let q = snr(&input[4_800..], &back[4_800..], 200);
                assert!(q > 30.0, "{kind:?} {ptime} ms: SNR {q:.1} dB");
            }
        }
    }

    #[test]
    fn packet_times_and_concealment() {
        assert!(LegCodec::new(LegCodecKind::Pcma, 25).is_none());
        assert!(LegCodec::new(LegCodecKind::Pcma, 70).is_none());
        let mut c = LegCodec::new(LegCodecKind::Pcma, 30).expect("codec");
        assert_eq!((c.room_samples(), c.timestamp_step()), (1_440, 240));
        assert_eq!(c.kind().payload_type(), 8);
        let mut out = Vec::new();
        c.conceal(&mut out);
        assert_eq!(out, vec![0; 1_440]);
    }
}
