//! Taps: any number of consumers of a room's raw packets (the recorder is one), fed without ever
//! blocking forwarding. Each tap has a bounded queue; a packet that does not fit is dropped and
//! counted, never waited for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::room::ParticipantId;

/// One packet as a tap sees it.
#[derive(Debug, Clone)]
pub struct TapPacket {
    pub participant: ParticipantId,
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// RFC 6464 level (-dBov) when the publisher sent one.
    pub audio_level: Option<u8>,
    pub arrival: SystemTime,
    pub payload: Bytes,
}

/// The sending half of a tap, held by the room.
#[derive(Debug, Clone)]
pub struct Tap {
    pub(crate) id: u64,
    pub(crate) name: Arc<str>,
    tx: mpsc::Sender<TapPacket>,
    dropped: Arc<AtomicU64>,
}

/// The receiving half, held by the consumer (e.g. the recorder wiring in `src`).
#[derive(Debug)]
pub struct TapReceiver {
    pub id: u64,
    pub rx: mpsc::Receiver<TapPacket>,
    dropped: Arc<AtomicU64>,
}

impl TapReceiver {
    /// Packets this tap could not take so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A new tap with room for `capacity` queued packets.
pub fn tap(id: u64, name: &str, capacity: usize) -> (Tap, TapReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        Tap {
            id,
            name: Arc::from(name),
            tx,
            dropped: dropped.clone(),
        },
        TapReceiver { id, rx, dropped },
    )
}

impl Tap {
    /// Offer a packet; returns false (and counts it) when the tap is full or gone.
    pub fn offer(&self, pkt: TapPacket) -> bool {
        match self.tx.try_send(pkt) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16) -> TapPacket {
        TapPacket {
            participant: Arc::from("p"),
            ssrc: 1,
            payload_type: 111,
            sequence: seq,
            timestamp: 0,
            marker: false,
            audio_level: None,
            arrival: SystemTime::now(),
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn full_tap_drops_and_counts_instead_of_blocking() {
        let (t, mut r) = tap(1, "rec", 2);
        assert!(t.offer(pkt(1)));
        assert!(t.offer(pkt(2)));
        assert!(!t.offer(pkt(3)));
        assert_eq!(r.dropped(), 1);
        assert_eq!(r.rx.try_recv().expect("first").sequence, 1);
        assert!(t.offer(pkt(4)));
        drop(r);
        assert!(t.is_closed());
        assert!(!t.offer(pkt(5)));
    }
}
