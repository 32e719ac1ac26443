//! Counters of the media plane, read by `src` for `/metrics`. Relaxed atomics: each counter is
//! independent and only ever grows (gauges excepted).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct MediaStats {
    pub rooms: AtomicI64,
    pub participants: AtomicI64,
    pub subscribers: AtomicI64,
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Packets a subscriber's queue could not take (slow subscriber).
    pub subscriber_drops: AtomicU64,
    /// Packets a tap could not take.
    pub tap_drops: AtomicU64,
    /// write_rtp failures toward subscribers.
    pub forward_errors: AtomicU64,
    /// Packets that were not Opus / had an unexpected payload type.
    pub rejected_packets: AtomicU64,
    /// Peer connections that failed ICE/DTLS or timed out.
    pub media_timeouts: AtomicU64,
    /// Connected peer connections by the SRTP profile DTLS chose: AEAD AES-GCM ...
    pub srtp_aead_gcm: AtomicU64,
    /// ... or AES-CM with HMAC-SHA1.
    pub srtp_aes_cm: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub rooms: i64,
    pub participants: i64,
    pub subscribers: i64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub subscriber_drops: u64,
    pub tap_drops: u64,
    pub forward_errors: u64,
    pub rejected_packets: u64,
    pub media_timeouts: u64,
    pub srtp_aead_gcm: u64,
    pub srtp_aes_cm: u64,
}

impl MediaStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            rooms: g(&self.rooms),
            participants: g(&self.participants),
            subscribers: g(&self.subscribers),
            packets_in: l(&self.packets_in),
            bytes_in: l(&self.bytes_in),
            packets_out: l(&self.packets_out),
            bytes_out: l(&self.bytes_out),
            subscriber_drops: l(&self.subscriber_drops),
            tap_drops: l(&self.tap_drops),
            forward_errors: l(&self.forward_errors),
            rejected_packets: l(&self.rejected_packets),
            media_timeouts: l(&self.media_timeouts),
            srtp_aead_gcm: l(&self.srtp_aead_gcm),
            srtp_aes_cm: l(&self.srtp_aes_cm),
        }
    }

    pub(crate) fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn gauge(a: &AtomicI64, d: i64) {
        a.fetch_add(d, Ordering::Relaxed);
    }
}
