//! Integer-ratio resampling between a PSTN leg's rate (8 or 16 kHz) and the rooms' 48 kHz, with
//! a polyphase windowed-sinc low-pass: upsampling inserts `factor - 1` zeros and filters
//! (computed per output phase, so the zeros cost nothing); downsampling filters and keeps every
//! `factor`-th sample (only those are computed). The filter cuts at 0.45 of the lower rate
//! (3.6 kHz for 8 kHz), so what the lower rate cannot carry does not fold back as aliasing.
//!
//! Streaming: state carries across calls, so frames of any length can be fed in turn. The
//! delay is `TAPS_PER_PHASE / 2` samples at the lower rate (2 ms at 8 kHz).

use std::collections::VecDeque;
use std::f64::consts::PI;

/// Filter length per polyphase branch (at the lower rate).
const TAPS_PER_PHASE: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// A streaming resampler by an integer factor (up or down).
#[derive(Debug, Clone)]
pub struct Resampler {
    direction: Direction,
    factor: usize,
    /// `factor * TAPS_PER_PHASE` coefficients of the prototype low-pass.
    taps: Vec<f32>,
    /// Recent input samples, newest last.
    history: VecDeque<f32>,
    /// Down: input samples seen since the last output.
    phase: usize,
}

impl Resampler {
    /// From `from_hz` to `to_hz`, one of which divides the other. `None` otherwise.
    pub fn new(from_hz: u32, to_hz: u32) -> Option<Resampler> {
        if from_hz == 0 || to_hz == 0 {
            return None;
        }
        let (direction, factor) = if to_hz >= from_hz && to_hz.is_multiple_of(from_hz) {
            (Direction::Up, (to_hz / from_hz) as usize)
        } else if from_hz > to_hz && from_hz.is_multiple_of(to_hz) {
            (Direction::Down, (from_hz / to_hz) as usize)
        } else {
            return None;
        };
        let n = factor * TAPS_PER_PHASE;
        // Cut-off relative to the higher rate's Nyquist frequency.
        let cutoff = 0.9 / factor as f64;
        let mid = (n as f64 - 1.0) / 2.0;
        let mut taps: Vec<f32> = (0..n)
            .map(|i| {
                let x = i as f64 - mid;
                let sinc = if x == 0.0 {
                    cutoff
                } else {
                    (PI * cutoff * x).sin() / (PI * x)
                };
                // Blackman window.
                let w = 0.42 - 0.5 * (2.0 * PI * i as f64 / (n as f64 - 1.0)).cos()
                    + 0.08 * (4.0 * PI * i as f64 / (n as f64 - 1.0)).cos();
                (sinc * w) as f32
            })
            .collect();
        // Unity gain at DC: for upsampling each phase must sum to 1 (the zeros take the rest).
        let sum: f32 = taps.iter().sum();
        let gain = if direction == Direction::Up {
            factor as f32 / sum
        } else {
            1.0 / sum
        };
        taps.iter_mut().for_each(|t| *t *= gain);
        let hist_len = match direction {
            Direction::Up => TAPS_PER_PHASE,
            Direction::Down => n,
        };
        Some(Resampler {
            direction,
            factor,
            taps,
            history: std::iter::repeat_n(0.0, hist_len).collect(),
            phase: 0,
        })
    }

    /// Output samples for `input.len()` input samples (exact for upsampling; downsampling
    /// carries the remainder to the next call).
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        match self.direction {
            Direction::Up => self.up(input, out),
            Direction::Down => self.down(input, out),
        }
    }

    fn up(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let l = self.factor;
        for &s in input {
            self.history.pop_front();
            self.history.push_back(s as f32);
            // Output phase p uses taps p, p + L, p + 2L, ... against the newest samples.
            for p in 0..l {
                let mut acc = 0.0f32;
                for (k, h) in self.history.iter().rev().enumerate() {
                    acc += h * self.taps[p + k * l];
                }
                out.push(saturate(acc));
            }
        }
    }

    fn down(&mut self, input: &[i16], out: &mut Vec<i16>) {
        for &s in input {
            self.history.pop_front();
            self.history.push_back(s as f32);
            self.phase += 1;
            if self.phase == self.factor {
                self.phase = 0;
                let acc: f32 = self
                    .history
                    .iter()
                    .rev()
                    .zip(&self.taps)
                    .map(|(h, t)| h * t)
                    .sum();
                out.push(saturate(acc));
            }
        }
    }
}

fn saturate(x: f32) -> i16 {
    x.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, rate: f64, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| ((2.0 * PI * hz * i as f64 / rate).sin() * amp) as i16)
            .collect()
    }

    /// Level of `hz` in `x` (a single-bin DFT), as amplitude.
    fn level(x: &[i16], hz: f64, rate: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in x.iter().enumerate() {
            let ph = 2.0 * PI * hz * i as f64 / rate;
            re += s as f64 * ph.cos();
            im += s as f64 * ph.sin();
        }
        2.0 * (re * re + im * im).sqrt() / x.len() as f64
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn only_integer_ratios() {
        assert!(Resampler::new(8_000, 48_000).is_some());
        assert!(Resampler::new(48_000, 16_000).is_some());
        assert!(Resampler::new(44_100, 48_000).is_none());
        assert!(Resampler::new(0, 48_000).is_none());
        assert!(Resampler::new(8_000, 0).is_none());
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_level_through_8k_to_48k_and_back() {
        let input = tone(1_000.0, 8_000.0, 8_000, 10_000.0);
        let mut up = Resampler::new(8_000, 48_000).expect("up");
        let mut hi = Vec::new();
        // In 20 ms frames, as a leg delivers them.
        for f in input.chunks(160) {
            up.process(f, &mut hi);
        }
        assert_eq!(hi.len(), 48_000);
        let steady = &hi[4_800..];
        let l = level(steady, 1_000.0, 48_000.0);
        assert!((l - 10_000.0).abs() < 300.0, "1 kHz at 48 kHz: {l:.0}");
        // Nothing of the images at 7 and 9 kHz (8 kHz +- 1 kHz).
        for image in [7_000.0, 9_000.0] {
            let li = level(steady, image, 48_000.0);
            assert!(li < 10.0, "image at {image} Hz: {li:.1}");
        }
        let mut down = Resampler::new(48_000, 8_000).expect("down");
        let mut lo = Vec::new();
        for f in hi.chunks(960) {
            down.process(f, &mut lo);
        }
        assert_eq!(lo.len(), 8_000);
        let l = level(&lo[800..], 1_000.0, 8_000.0);
        assert!((l - 10_000.0).abs() < 400.0, "1 kHz back at 8 kHz: {l:.0}");
    }

    #[test]
    fn downsampling_removes_what_the_low_rate_cannot_carry() {
        // 6 kHz at 48 kHz would alias to 2 kHz at 8 kHz.
        let input = tone(6_000.0, 48_000.0, 48_000, 10_000.0);
        let mut down = Resampler::new(48_000, 8_000).expect("down");
        let mut lo = Vec::new();
        down.process(&input, &mut lo);
        let steady = &lo[800..];
        let alias = level(steady, 2_000.0, 8_000.0);
        assert!(
            alias < 10_000.0 / 300.0,
            "aliased 2 kHz at {alias:.1} (> -50 dB)"
        );
        assert!(rms(steady) < 100.0, "residue rms {:.1}", rms(steady));
    }

    #[test]
    fn sixteen_khz_legs_and_silence() {
        let mut up = Resampler::new(16_000, 48_000).expect("up");
        let mut out = Vec::new();
        up.process(&[0; 320], &mut out);
        assert_eq!(out, vec![0; 960]);
        let mut down = Resampler::new(48_000, 16_000).expect("down");
        let mut lo = Vec::new();
        down.process(&tone(3_000.0, 48_000.0, 9_600, 8_000.0), &mut lo);
        assert_eq!(lo.len(), 3_200);
        let l = level(&lo[320..], 3_000.0, 16_000.0);
        assert!((l - 8_000.0).abs() < 300.0, "3 kHz at 16 kHz: {l:.0}");
    }
}
