//! A room's shared state: membership ([`RoomModel`]), the members' event channels, the
//! forwarding routes (an `ArcSwap` snapshot the hot path reads without locking), the speaker
//! detector; opening and closing rooms; the periodic audio-level ticker.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use super::{ParticipantEvent, RoomEvent, Sfu, lock};
use crate::forward::{Routes, SubscriberSink};
use crate::level::SpeakerDetector;
use crate::room::{Notices, ParticipantId, RoomModel};
use crate::stats::MediaStats;
use crate::tap::Tap;

pub(super) struct Room {
    pub(super) name: Arc<str>,
    /// Subscribe connections that are up (they hear what is forwarded now).
    pub(super) listeners: Arc<AtomicUsize>,
    pub(super) state: Mutex<RoomState>,
    pub(super) routes: ArcSwap<Routes>,
    pub(super) levels: Mutex<SpeakerDetector<ParticipantId>>,
}

pub(super) struct RoomState {
    pub(super) model: RoomModel,
    pub(super) members: HashMap<ParticipantId, mpsc::UnboundedSender<ParticipantEvent>>,
    pub(super) sinks: Vec<SubscriberSink>,
    pub(super) taps: Vec<Tap>,
    pub(super) closed: bool,
}

impl Room {
    pub(super) fn publish_routes(&self, st: &RoomState) {
        self.routes.store(Arc::new(Routes {
            sinks: st.sinks.clone(),
            taps: st.taps.clone(),
        }));
    }

    pub(super) fn dispatch(&self, st: &RoomState, notices: Notices) {
        for (to, n) in notices {
            if let Some(tx) = st.members.get(&to) {
                let _ = tx.send(ParticipantEvent::Notice(n));
            }
        }
    }
}

impl Sfu {
    pub(super) fn room(&self, name: &str) -> Arc<Room> {
        let mut rooms = lock(&self.inner.rooms);
        if let Some(r) = rooms.get(name) {
            return r.clone();
        }
        let name_arc: Arc<str> = Arc::from(name);
        // The room's engine worker hears every packet not read by the worker itself (system
        // audio, phone legs, webrtc-rs publishers) for its connections in this room.
        let sinks: Vec<SubscriberSink> = self
            .engine_for(name)
            .map(|w| SubscriberSink {
                subscriber: Arc::from(""),
                only: None,
                tx: w.inject_sender(),
                engine_room: Some(name_arc.clone()),
            })
            .into_iter()
            .collect();
        let room = Arc::new(Room {
            name: name_arc,
            listeners: Arc::new(AtomicUsize::new(0)),
            state: Mutex::new(RoomState {
                model: RoomModel::new(name, self.inner.cfg.max_participants_per_room),
                members: HashMap::new(),
                sinks: sinks.clone(),
                taps: Vec::new(),
                closed: false,
            }),
            routes: ArcSwap::from_pointee(Routes {
                sinks,
                taps: Vec::new(),
            }),
            levels: Mutex::new(SpeakerDetector::new()),
        });
        rooms.insert(name.to_string(), room.clone());
        MediaStats::gauge(&self.inner.stats.rooms, 1);
        tracing::info!(room = %name, "room opened");
        self.inner.events.emit(RoomEvent::Opened(name.to_string()));
        tokio::spawn(level_ticker(
            Arc::downgrade(&room),
            self.inner.cfg.audio_level_interval,
        ));
        room
    }

    pub(super) fn drop_room_if_closed(&self, room: &Arc<Room>) {
        let closed = lock(&room.state).closed;
        if !closed {
            return;
        }
        let mut rooms = lock(&self.inner.rooms);
        if rooms
            .get(room.name.as_ref())
            .is_some_and(|r| Arc::ptr_eq(r, room))
        {
            rooms.remove(room.name.as_ref());
            MediaStats::gauge(&self.inner.stats.rooms, -1);
            tracing::info!(room = %room.name, "room closed");
            self.inner
                .events
                .emit(RoomEvent::Closed(room.name.to_string()));
        }
    }
}

/// Periodic audio levels and active-speaker changes for one room.
pub(super) async fn level_ticker(room: Weak<Room>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(r) = room.upgrade() else { break };
        let (levels, speaker, changed) = lock(&r.levels).tick(Instant::now());
        let st = lock(&r.state);
        if st.closed {
            break;
        }
        if levels.is_empty() {
            continue;
        }
        for tx in st.members.values() {
            let _ = tx.send(ParticipantEvent::AudioLevels {
                levels: levels.clone(),
                active_speaker: speaker.clone(),
            });
            if changed {
                let _ = tx.send(ParticipantEvent::ActiveSpeaker(speaker.clone()));
            }
        }
    }
}
