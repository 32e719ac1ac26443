//! What the generator measures: a lock-free latency histogram, the global send/receive
//! counters ([`Meter`]), and each receiving participant's per-stream sequence accounting
//! ([`Inbox`]), from which loss is computed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stamp::{Stamp, now_ns, read_stamp};

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (SUB as usize) * (64 - SUB_BITS as usize + 1);

/// Log-linear histogram of u64 values (32 sub-buckets per power of two: within 3%).
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let shift = e - SUB_BITS;
    (SUB + u64::from(shift) * SUB + ((v >> shift) & (SUB - 1))) as usize
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let m = (i - SUB) % SUB;
    ((SUB + m) << shift) + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn record(&self, v: u64) {
        self.buckets[index(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now; subtract two snapshots for a window.
    pub fn snapshot(&self) -> Counts {
        Counts(
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        )
    }
}

/// Bucket counts of a [`Histogram`] at one moment, or of a window between two moments.
#[derive(Debug, Clone, Default)]
pub struct Counts(Vec<u64>);

impl Counts {
    /// `self - earlier`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts(
            self.0
                .iter()
                .enumerate()
                .map(|(i, c)| c - earlier.0.get(i).copied().unwrap_or(0))
                .collect(),
        )
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The value at quantile `q` (0..=1), None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64 * q).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(value(i));
            }
        }
        None
    }
}

/// Counters shared by every participant of one run.
#[derive(Debug, Default)]
pub struct Meter {
    /// Packets handed to the publishers' tracks.
    pub sent: AtomicU64,
    /// Stamped packets received by subscribers.
    pub received: AtomicU64,
    /// Received packets without a stamp (not ours, or altered on the way).
    pub unstamped: AtomicU64,
    /// Forwarding latency, send to receive, in nanoseconds.
    pub latency: Histogram,
    /// Highest latency since the last [`Meter::take_max`].
    max_ns: AtomicU64,
}

impl Meter {
    /// Highest latency (ns) since the last call, and reset.
    pub fn take_max(&self) -> u64 {
        self.max_ns.swap(0, Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
struct StreamState {
    first: u32,
    highest: u32,
    received: u64,
}

/// One receiving participant's streams (one per remote sender), for loss and join checks.
#[derive(Debug, Default)]
pub struct Inbox {
    streams: Mutex<HashMap<u32, StreamState>>,
}

/// Received and expected packets, summed over streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamTotals {
    pub received: u64,
    /// Sum over streams of (highest - first + 1) sequence numbers seen.
    pub expected: u64,
}

impl Inbox {
    /// Account one received payload.
    pub fn on_payload(&self, meter: &Meter, payload: &[u8]) {
        let now = now_ns();
        let Some(Stamp {
            sender,
            seq,
            sent_ns,
        }) = read_stamp(payload)
        else {
            meter.unstamped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let lat = now.saturating_sub(sent_ns);
        meter.latency.record(lat);
        meter.max_ns.fetch_max(lat, Ordering::Relaxed);
        meter.received.fetch_add(1, Ordering::Relaxed);
        let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let st = s.entry(sender).or_insert(StreamState {
            first: seq,
            highest: seq,
            received: 0,
        });
        st.received += 1;
        if seq > st.highest {
            st.highest = seq;
        }
        if seq < st.first {
            st.first = seq;
        }
    }

    /// Has a packet arrived from each of `senders`?
    pub fn heard_all(&self, senders: &[u32]) -> bool {
        let s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        senders.iter().all(|x| s.contains_key(x))
    }

    pub fn totals(&self) -> StreamTotals {
        let s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        s.values()
            .fold(StreamTotals::default(), |a, st| StreamTotals {
                received: a.received + st.received,
                expected: a.expected + u64::from(st.highest - st.first) + 1,
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::stamp::OpusTone;

    #[test]
    fn histogram_quantiles_are_within_three_percent() {
        let h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        let c = h.snapshot();
        for (q, want) in [(0.5, 500_000.0), (0.99, 990_000.0), (1.0, 1_000_000.0)] {
            let got = c.quantile(q).unwrap() as f64;
            assert!((got - want).abs() / want < 0.03, "q{q}: {got} vs {want}");
        }
        assert_eq!(c.since(&c).quantile(0.5), None);
        for v in [0, 1, 31, 32, 33, 64, 1000, u64::MAX / 2] {
            let i = index(v);
            assert!(i < BUCKETS);
            let back = value(i) as f64;
            assert!(v < 32 && back as u64 == v || (back - v as f64).abs() / (v as f64) < 0.04);
        }
    }

    #[test]
    fn inbox_counts_gaps_as_loss() {
        let tone = OpusTone::encode(2).unwrap();
        let meter = Meter::default();
        let inbox = Inbox::default();
        for seq in (10..20).filter(|s| *s != 15) {
            let p = tone.packet(&Stamp {
                sender: 3,
                seq,
                sent_ns: now_ns(),
            });
            inbox.on_payload(&meter, &p);
        }
        inbox.on_payload(&meter, b"not ours");
        assert_eq!(
            inbox.totals(),
            StreamTotals {
                received: 9,
                expected: 10
            }
        );
        assert!(inbox.heard_all(&[3]));
        assert!(!inbox.heard_all(&[3, 4]));
        assert_eq!(meter.unstamped.load(Ordering::Relaxed), 1);
        assert_eq!(meter.latency.snapshot().total(), 9);
    }
}
