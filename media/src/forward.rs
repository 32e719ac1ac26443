//! The forwarding core: one published packet fanned out to every subscriber's queue and every
//! tap, and on each subscriber's side, the map from producer to that subscriber's output stream
//! with its SSRC/sequence/timestamp rewrite. No sockets: the output type is generic, so the
//! logic is tested (and benchmarked) with plain values.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::rewrite::{Rewriter, Rewritten};
use crate::room::ParticipantId;
use crate::stats::MediaStats;
use crate::tap::{Tap, TapPacket};

/// One RTP packet from a producer, shared by every destination.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    pub producer: ParticipantId,
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub audio_level: Option<u8>,
    pub arrival: Instant,
    pub arrival_wall: SystemTime,
    pub payload: Bytes,
    /// Server-generated audio (consent beeps): forwarded but never tapped.
    pub system: bool,
    /// Deliver to this subscriber only.
    pub only_to: Option<ParticipantId>,
    /// Read by a media engine worker, which already wrote it to the engine connections of its
    /// room: the room's engine sink skips it.
    pub in_engine: bool,
}

/// What a subscriber's writer task receives.
#[derive(Debug)]
pub enum SinkMsg {
    Packet(Arc<MediaPacket>),
    /// To a media engine worker: a packet of this room for its connections there.
    Room(Arc<str>, Arc<MediaPacket>),
}

/// A subscriber's inbound queue, as the room's routes hold it.
#[derive(Debug, Clone)]
pub struct SubscriberSink {
    pub subscriber: ParticipantId,
    /// Deliver only this producer (WHEP); `None` = every producer but the subscriber itself.
    pub only: Option<ParticipantId>,
    pub tx: mpsc::Sender<SinkMsg>,
    /// A media engine worker's queue for this room's connections there (one per room): it gets
    /// every packet not read by that worker, tagged with the room, and applies `only_to` itself.
    pub engine_room: Option<Arc<str>>,
}

impl SubscriberSink {
    fn wants(&self, producer: &str) -> bool {
        match &self.only {
            Some(p) => p.as_ref() == producer,
            None => self.subscriber.as_ref() != producer,
        }
    }
}

/// Everything a room forwards to: read on every packet, replaced (copy-on-write) on changes.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub sinks: Vec<SubscriberSink>,
    pub taps: Vec<Tap>,
}

/// Outcome of one fan-out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fanout {
    pub queued: usize,
    pub dropped: usize,
    pub tapped: usize,
    pub tap_dropped: usize,
}

/// Hand one packet to every subscriber that wants it and to every tap. Never waits: a full
/// queue drops the packet for that destination only, and the drop is counted.
pub fn fan_out(routes: &Routes, pkt: &Arc<MediaPacket>, stats: &MediaStats) -> Fanout {
    let mut out = Fanout::default();
    for sink in &routes.sinks {
        let msg = match &sink.engine_room {
            Some(_) if pkt.in_engine => continue,
            Some(room) => SinkMsg::Room(room.clone(), pkt.clone()),
            None => {
                if !sink.wants(&pkt.producer)
                    || pkt.only_to.as_ref().is_some_and(|t| *t != sink.subscriber)
                {
                    continue;
                }
                SinkMsg::Packet(pkt.clone())
            }
        };
        match sink.tx.try_send(msg) {
            Ok(()) => out.queued += 1,
            Err(mpsc::error::TrySendError::Full(_)) => out.dropped += 1,
            // The subscriber is going away; its removal from the routes is under way.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    for tap in routes.taps.iter().filter(|_| !pkt.system) {
        let accepted = tap.offer(TapPacket {
            participant: pkt.producer.clone(),
            ssrc: pkt.ssrc,
            payload_type: pkt.payload_type,
            sequence: pkt.sequence,
            timestamp: pkt.timestamp,
            marker: pkt.marker,
            audio_level: pkt.audio_level,
            arrival: pkt.arrival_wall,
            payload: pkt.payload.clone(),
        });
        if accepted {
            out.tapped += 1;
        } else {
            out.tap_dropped += 1;
        }
    }
    MediaStats::add(&stats.subscriber_drops, out.dropped as u64);
    MediaStats::add(&stats.tap_drops, out.tap_dropped as u64);
    out
}

/// A subscriber's consumers: for each producer it hears, the output it is written to and that
/// output's rewriter.
#[derive(Debug)]
pub struct ConsumerSet<T> {
    consumers: HashMap<ParticipantId, (T, Rewriter)>,
    clock_rate: u32,
}

impl<T> ConsumerSet<T> {
    pub fn new(clock_rate: u32) -> Self {
        ConsumerSet {
            consumers: HashMap::new(),
            clock_rate,
        }
    }

    /// Start consuming `producer` on `output`, whose SSRC is `ssrc`.
    pub fn add(&mut self, producer: ParticipantId, output: T, ssrc: u32) {
        self.consumers
            .insert(producer, (output, Rewriter::new(ssrc, self.clock_rate)));
    }

    pub fn remove(&mut self, producer: &str) -> Option<T> {
        self.consumers.remove(producer).map(|(t, _)| t)
    }

    pub fn contains(&self, producer: &str) -> bool {
        self.consumers.contains_key(producer)
    }

    pub fn len(&self) -> usize {
        self.consumers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.consumers.is_empty()
    }

    /// The output and rewritten header for a packet; `None` when the producer is not consumed
    /// (yet, or any more).
    pub fn route(&mut self, pkt: &MediaPacket) -> Option<(&T, Rewritten)> {
        let (out, rw) = self.consumers.get_mut(pkt.producer.as_ref())?;
        let h = rw.rewrite(pkt.ssrc, pkt.sequence, pkt.timestamp, pkt.arrival);
        Some((out, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::tap;

    fn packet(producer: &str, seq: u16) -> Arc<MediaPacket> {
        Arc::new(MediaPacket {
            producer: Arc::from(producer),
            ssrc: 0x1111,
            payload_type: 111,
            sequence: seq,
            timestamp: u32::from(seq) * 960,
            marker: false,
            audio_level: Some(30),
            arrival: Instant::now(),
            arrival_wall: SystemTime::now(),
            payload: Bytes::from(vec![seq as u8; 40]),
            system: false,
            only_to: None,
            in_engine: false,
        })
    }

    fn sink(
        sub: &str,
        only: Option<&str>,
        cap: usize,
    ) -> (SubscriberSink, mpsc::Receiver<SinkMsg>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            SubscriberSink {
                subscriber: Arc::from(sub),
                only: only.map(Arc::from),
                tx,
                engine_room: None,
            },
            rx,
        )
    }

    #[test]
    fn every_other_subscriber_gets_the_packet_untouched() {
        let stats = MediaStats::default();
        let (sa, mut ra) = sink("a", None, 8);
        let (sb, mut rb) = sink("b", None, 8);
        let (sc, mut rc) = sink("c", None, 8);
        let routes = Routes {
            sinks: vec![sa, sb, sc],
            taps: vec![],
        };
        let p = packet("a", 5);
        let f = fan_out(&routes, &p, &stats);
        assert_eq!(f.queued, 2);
        assert!(ra.try_recv().is_err(), "no echo to the publisher");
        for rx in [&mut rb, &mut rc] {
            let Ok(SinkMsg::Packet(got)) = rx.try_recv() else {
                panic!("delivered")
            };
            assert_eq!(got.payload, p.payload);
            assert_eq!(got.sequence, 5);
        }
    }

    #[test]
    fn whep_sink_only_gets_its_producer_and_slow_sinks_drop() {
        let stats = MediaStats::default();
        let (only_b, mut rx_only) = sink("w", Some("b"), 8);
        let (slow, _rx_slow) = sink("s", None, 1);
        let (t, mut trx) = tap(1, "rec", 1);
        let routes = Routes {
            sinks: vec![only_b, slow],
            taps: vec![t],
        };
        let f1 = fan_out(&routes, &packet("a", 1), &stats);
        assert_eq!(
            f1,
            Fanout {
                queued: 1,
                dropped: 0,
                tapped: 1,
                tap_dropped: 0
            }
        );
        let f2 = fan_out(&routes, &packet("b", 2), &stats);
        assert_eq!(f2.queued, 1, "the WHEP sink");
        assert_eq!(f2.dropped, 1, "the slow sink is full");
        assert_eq!(f2.tap_dropped, 1);
        let Ok(SinkMsg::Packet(got)) = rx_only.try_recv() else {
            panic!("b's packet")
        };
        assert_eq!(got.producer.as_ref(), "b");
        assert_eq!(trx.rx.try_recv().expect("tapped").sequence, 1);
        let s = stats.snapshot();
        assert_eq!((s.subscriber_drops, s.tap_drops), (1, 1));
    }

    #[test]
    fn consumer_set_rewrites_ssrc_per_output_and_ignores_unknown_producers() {
        let mut set: ConsumerSet<&'static str> = ConsumerSet::new(48000);
        set.add(Arc::from("a"), "track-a", 0xAAAA);
        set.add(Arc::from("b"), "track-b", 0xBBBB);
        let (out, h) = set.route(&packet("a", 9)).expect("a consumed");
        assert_eq!((*out, h.ssrc, h.sequence), ("track-a", 0xAAAA, 9));
        let (out, h) = set.route(&packet("b", 10)).expect("b consumed");
        assert_eq!((*out, h.ssrc), ("track-b", 0xBBBB));
        assert!(set.route(&packet("zz", 1)).is_none());
        assert_eq!(set.remove("a"), Some("track-a"));
        assert!(set.route(&packet("a", 11)).is_none());
    }
}
