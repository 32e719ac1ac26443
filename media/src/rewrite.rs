//! Per-destination RTP rewriting: the SSRC, sequence number and timestamp space of one outgoing
//! stream.
//!
//! Each subscriber receives each publisher on a local track with its own SSRC. The publisher's
//! sequence numbers and timestamps are mapped into that output space with an offset, so the
//! output is continuous even when the source changes underneath (the publisher reconnects,
//! republishes, or its SSRC changes): the first packet of a new source continues one sequence
//! number after the last one sent, with the timestamp advanced by the wall-clock time elapsed.

use std::time::Instant;

/// Sequence/timestamp state of one output stream. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct Rewriter {
    ssrc: u32,
    clock_rate: u32,
    source: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    /// Highest output sequence sent (extended to detect wrap) and its timestamp and time.
    last_seq: Option<u16>,
    last_ts: u32,
    last_at: Option<Instant>,
}

/// The rewritten header fields of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
}

impl Rewriter {
    /// A fresh output stream with SSRC `ssrc` at `clock_rate` Hz (48000 for Opus).
    pub fn new(ssrc: u32, clock_rate: u32) -> Self {
        Rewriter {
            ssrc,
            clock_rate,
            source: None,
            seq_offset: 0,
            ts_offset: 0,
            last_seq: None,
            last_ts: 0,
            last_at: None,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Map one packet of source `src_ssrc` arriving at `now`.
    pub fn rewrite(&mut self, src_ssrc: u32, seq: u16, ts: u32, now: Instant) -> Rewritten {
        if self.source != Some(src_ssrc) {
            // New source: continue right after what was last sent.
            match (self.last_seq, self.last_at) {
                (Some(last_seq), Some(last_at)) => {
                    let elapsed = now.saturating_duration_since(last_at);
                    let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)) as u64;
                    // At least one 20 ms frame apart so the decoder sees a forward step.
                    let ticks = ticks.max(u64::from(self.clock_rate / 50)) as u32;
                    let next_seq = last_seq.wrapping_add(1);
                    let next_ts = self.last_ts.wrapping_add(ticks);
                    self.seq_offset = next_seq.wrapping_sub(seq);
                    self.ts_offset = next_ts.wrapping_sub(ts);
                }
                _ => {
                    // First source ever: a random-looking but deterministic start is not needed;
                    // pass numbers through unchanged.
                    self.seq_offset = 0;
                    self.ts_offset = 0;
                }
            }
            self.source = Some(src_ssrc);
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        let newer = match self.last_seq {
            None => true,
            Some(l) => is_newer(out_seq, l),
        };
        if newer {
            self.last_seq = Some(out_seq);
            self.last_ts = out_ts;
            self.last_at = Some(now);
        }
        Rewritten {
            ssrc: self.ssrc,
            sequence: out_seq,
            timestamp: out_ts,
        }
    }
}

/// RFC 1982 serial-number comparison on 16 bits: is `a` after `b`?
pub fn is_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn passes_through_a_single_source_with_the_output_ssrc() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(0xABCD, 48000);
        for i in 0..100u16 {
            let seq = 65500u16.wrapping_add(i);
            let ts = 1000u32.wrapping_add(u32::from(i) * 960);
            let out = r.rewrite(7, seq, ts, t0 + Duration::from_millis(u64::from(i) * 20));
            assert_eq!(out.ssrc, 0xABCD);
            assert_eq!(out.sequence, seq);
            assert_eq!(out.timestamp, ts);
        }
    }

    #[test]
    fn new_source_continues_sequence_and_advances_timestamp_by_wall_clock() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(1, 48000);
        let a = r.rewrite(10, 500, 90_000, t0);
        let b = r.rewrite(10, 501, 90_960, t0 + Duration::from_millis(20));
        assert_eq!(b.sequence, a.sequence + 1);
        // Source restarts with unrelated numbers one second later.
        let c = r.rewrite(11, 7, 3, t0 + Duration::from_millis(1020));
        assert_eq!(c.sequence, b.sequence.wrapping_add(1));
        assert_eq!(c.timestamp, b.timestamp.wrapping_add(48_000));
        let d = r.rewrite(11, 8, 963, t0 + Duration::from_millis(1040));
        assert_eq!(d.sequence, c.sequence.wrapping_add(1));
        assert_eq!(d.timestamp, c.timestamp.wrapping_add(960));
    }

    #[test]
    fn reordered_packets_keep_their_relative_numbers() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(1, 48000);
        r.rewrite(10, 100, 0, t0);
        let late = r.rewrite(10, 99, 65_000, t0);
        assert_eq!(late.sequence, 99);
        let next = r.rewrite(10, 101, 960, t0);
        assert_eq!(next.sequence, 101);
        // A source switch after a reordered packet continues from the highest sent (101).
        let s = r.rewrite(12, 0, 0, t0 + Duration::from_millis(5));
        assert_eq!(s.sequence, 102);
        assert_eq!(s.timestamp, 960 + 960, "at least one frame step");
    }

    #[test]
    fn serial_comparison_wraps() {
        assert!(is_newer(1, 65535));
        assert!(!is_newer(65535, 1));
        assert!(!is_newer(5, 5));
    }
}
