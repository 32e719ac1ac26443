//! The server's own audio source in a room ([`SystemSource`]): consent announcements and beeps,
//! played as 20 ms Opus frames to every subscriber or to one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{OPUS_PT, Room, Sfu, SfuError, lock, new_id};
use crate::forward::{MediaPacket, fan_out};
use crate::room::{LeaveReason, ParticipantId, ParticipantKind};
use crate::stats::MediaStats;

impl Sfu {
    /// Add the server's own audio source to an open room: every subscriber gets a track for
    /// it, and [`SystemSource::play`] sends Opus frames on it (consent beeps, announcements).
    /// It is never tapped and does not keep the room open. Dropping it removes it.
    pub fn add_system_source(&self, room: &str) -> Result<SystemSource, SfuError> {
        let r = lock(&self.inner.rooms)
            .get(room)
            .cloned()
            .ok_or_else(|| SfuError::NotFound(format!("no room `{room}`")))?;
        let id: ParticipantId = Arc::from(new_id().as_str());
        let mut st = lock(&r.state);
        if st.closed {
            return Err(SfuError::NotFound(format!("room `{room}` is closing")));
        }
        let (_, n1) = st.model.join(
            id.clone(),
            "Recording notice".into(),
            "system".into(),
            ParticipantKind::System,
            false,
        )?;
        let n2 = st.model.set_publishing(&id, true)?;
        r.dispatch(&st, n1);
        r.dispatch(&st, n2);
        drop(st);
        Ok(SystemSource {
            id,
            room: r,
            stats: self.inner.stats.clone(),
            clock: Arc::new(Mutex::new(SystemClock {
                ssrc: rand::random(),
                seq: rand::random(),
                started: Instant::now(),
            })),
        })
    }
}

pub(super) struct SystemClock {
    pub(super) ssrc: u32,
    pub(super) seq: u16,
    pub(super) started: Instant,
}

/// The server's own audio source in a room (see [`Sfu::add_system_source`]).
pub struct SystemSource {
    pub(super) id: ParticipantId,
    pub(super) room: Arc<Room>,
    pub(super) stats: Arc<MediaStats>,
    pub(super) clock: Arc<Mutex<SystemClock>>,
}

impl SystemSource {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether any subscribe connection in the room is up right now.
    pub fn listening(&self) -> bool {
        self.room.listeners.load(Ordering::Relaxed) > 0
    }

    /// Wait until at least one subscribe connection in the room is up (someone would hear
    /// what is played), at most `timeout`. Returns whether someone is listening.
    pub async fn wait_for_listener(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.room.listeners.load(Ordering::Relaxed) > 0 {
                return true;
            }
            if Instant::now() >= deadline || lock(&self.room.state).closed {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Play 20 ms Opus frames into the room, paced in real time. Returns when done (or when
    /// the room is gone).
    pub async fn play(&self, frames: Arc<Vec<bytes::Bytes>>) {
        self.play_inner(frames, None).await
    }

    /// Play frames to one subscriber only (e.g. the recording announcement for someone who
    /// just started listening). They go out on a separate RTP source, so that subscriber's
    /// output stays continuous and nobody else notices.
    pub async fn play_to(&self, frames: Arc<Vec<bytes::Bytes>>, participant: &str) {
        self.play_inner(frames, Some(Arc::from(participant))).await
    }

    pub(super) async fn play_inner(
        &self,
        frames: Arc<Vec<bytes::Bytes>>,
        only_to: Option<ParticipantId>,
    ) {
        let private = only_to.as_ref().map(|_| SystemClock {
            ssrc: rand::random(),
            seq: rand::random(),
            started: Instant::now(),
        });
        let private = private.map(Mutex::new);
        let room = Arc::downgrade(&self.room);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for (i, f) in frames.iter().enumerate() {
            tick.tick().await;
            let Some(room) = room.upgrade() else { return };
            if lock(&room.state).closed {
                return;
            }
            let now = Instant::now();
            let (ssrc, seq, ts) = {
                let mut c = match &private {
                    Some(p) => lock(p),
                    None => lock(&self.clock),
                };
                c.seq = c.seq.wrapping_add(1);
                // RTP time follows the wall clock since the source started, in 20 ms steps.
                let frames_since = (now.duration_since(c.started).as_millis() / 20) as u32;
                (c.ssrc, c.seq, frames_since.wrapping_mul(960))
            };
            let mp = Arc::new(MediaPacket {
                producer: self.id.clone(),
                ssrc,
                payload_type: OPUS_PT,
                sequence: seq,
                timestamp: ts,
                marker: i == 0,
                audio_level: None,
                arrival: now,
                arrival_wall: SystemTime::now(),
                payload: f.clone(),
                system: true,
                only_to: only_to.clone(),
                in_engine: false,
            });
            let routes = room.routes.load();
            fan_out(&routes, &mp, &self.stats);
        }
    }
}

impl Drop for SystemSource {
    fn drop(&mut self) {
        let mut st = lock(&self.room.state);
        if let Ok((_, notices)) = st.model.leave(&self.id, LeaveReason::Left) {
            self.room.dispatch(&st, notices);
        }
    }
}
