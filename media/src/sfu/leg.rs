//! A phone leg's place in a room ([`LegPort`]): it publishes 20 ms Opus frames like any
//! publisher (levels, fan-out, taps, so browsers hear it and the recorder records it) and
//! receives every other producer's packets, the server's consent audio included, through an
//! ordinary subscriber queue: `SubscriberSink::wants` skips its own producer, so mix-minus is
//! the fan-out's own rule. The RTP side (codecs, jitter, pacing) is `crate::pstn`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{OPUS_PT, Participant, ParticipantEvent, RoomEvent, Sfu, SfuError, lock};
use crate::forward::{MediaPacket, SinkMsg, SubscriberSink, fan_out};
use crate::room::{LeaveReason, ParticipantKind};
use crate::stats::MediaStats;

/// Packets queued towards one leg before drops are counted (2 s of four talkers).
const LEG_QUEUE: usize = 400;

/// A phone leg joined to a room (see the module docs). Leaving: [`LegPort::leave`], or drop.
pub struct LegPort {
    participant: Option<Participant>,
    downlink: Option<mpsc::Receiver<SinkMsg>>,
    ssrc: u32,
    seq: u16,
    first: bool,
    listening: bool,
}

impl Sfu {
    /// Join `room` as a phone leg (kind `pstn`): it publishes at once and hears everyone else.
    pub fn join_leg(
        &self,
        room: &str,
        display_name: String,
        role: String,
    ) -> Result<LegPort, SfuError> {
        let (p, _) = self.join(room, display_name, role, ParticipantKind::Pstn)?;
        let (tx, rx) = mpsc::channel(LEG_QUEUE);
        {
            let mut st = lock(&p.room.state);
            let notices = st.model.set_publishing(&p.id, true)?;
            p.room.dispatch(&st, notices);
            st.sinks.push(SubscriberSink {
                subscriber: p.id.clone(),
                only: None,
                tx,
                engine_room: None,
            });
            p.room.publish_routes(&st);
            MediaStats::gauge(&self.inner.stats.subscribers, 1);
            p.room.listeners.fetch_add(1, Ordering::Relaxed);
            // Under the room's lock, as every room event: the recording wiring plays the
            // announcement to this participant from now on.
            self.inner.events.emit(RoomEvent::Listening {
                room: p.room.name.to_string(),
                participant: p.id.to_string(),
            });
        }
        Ok(LegPort {
            participant: Some(p),
            downlink: Some(rx),
            ssrc: rand::random(),
            seq: rand::random(),
            first: true,
            listening: true,
        })
    }
}

impl LegPort {
    fn p(&self) -> &Participant {
        // Only `leave` takes it, and it consumes self.
        self.participant
            .as_ref()
            .expect("participant present until leave")
    }

    pub fn id(&self) -> &str {
        &self.p().id
    }

    pub fn room_name(&self) -> &str {
        self.p().room_name()
    }

    /// Publish one Opus frame (48 kHz RTP clock) into the room. `level` is the audio level in
    /// -dBov (0 loudest, 127 silence), as RFC 6464 carries it.
    pub fn publish(&mut self, payload: Bytes, timestamp: u32, level: Option<u8>) {
        let p = self.p();
        let now = Instant::now();
        if let Some(l) = level {
            lock(&p.room.levels).observe(&p.id, l, now);
        }
        let stats = &p.sfu.inner.stats;
        MediaStats::add(&stats.packets_in, 1);
        MediaStats::add(&stats.bytes_in, payload.len() as u64);
        let pkt = Arc::new(MediaPacket {
            producer: p.id.clone(),
            ssrc: self.ssrc,
            payload_type: OPUS_PT,
            sequence: self.seq,
            timestamp,
            marker: self.first,
            audio_level: level,
            arrival: now,
            arrival_wall: SystemTime::now(),
            payload,
            system: false,
            only_to: None,
            in_engine: false,
        });
        let routes = p.room.routes.load();
        fan_out(&routes, &pkt, &p.sfu.inner.stats);
        self.seq = self.seq.wrapping_add(1);
        self.first = false;
    }

    /// The queue of what every other producer (and the server's consent audio) sends into the
    /// room, for the leg's mixer. Taken once.
    pub fn take_downlink(&mut self) -> Option<mpsc::Receiver<SinkMsg>> {
        self.downlink.take()
    }

    /// The next event for this participant (`Removed` when the call ends or the server stops).
    pub async fn event(&mut self) -> Option<ParticipantEvent> {
        match self.participant.as_mut() {
            Some(p) => p.events.recv().await,
            None => None,
        }
    }

    /// Leave the room.
    pub async fn leave(mut self, reason: LeaveReason) {
        self.unlisten();
        if let Some(p) = self.participant.take() {
            p.leave(reason).await;
        }
    }

    fn unlisten(&mut self) {
        if std::mem::take(&mut self.listening)
            && let Some(p) = &self.participant
        {
            p.room.listeners.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for LegPort {
    fn drop(&mut self) {
        self.unlisten();
    }
}
