//! [`Participant`]: one member of a room and its two connections: publish (the client offers
//! its microphone) and subscribe (the server offers one track per other producer, renegotiated
//! as the room changes); trickled candidates; leaving.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{RTCIceCandidateInit, RTCSessionDescription};
use webrtc::rtp_transceiver::RtpSender;

use super::io::{ListenerCtx, PublisherCtx, WriterCtrl, watch_engine, watch_peer, writer_task};
use super::negotiate::{complete_local_sdp, local_track, negotiated_pt};
use super::{ParticipantEvent, Room, RoomEvent, Sfu, SfuError, SubscribedTrack, Target, lock};
use crate::engine::{EngineError, PacketHook};
use crate::forward::SubscriberSink;
use crate::level::AUDIO_LEVEL_URI;
use crate::peer::{Peer, PeerError, extmap_id, offers_opus};
use crate::room::{LeaveReason, ParticipantId, ParticipantMeta};
use crate::stats::MediaStats;

/// One consumed producer on a subscribe connection.
pub(super) struct Consumer {
    pub(super) track: Arc<TrackLocalStaticRTP>,
    pub(super) sender: Arc<dyn RtpSender>,
    pub(super) ssrc: u32,
    /// Whether the writer task knows it (only after the client's answer).
    pub(super) announced: bool,
}

pub(super) struct SubscribeSide {
    pub(super) peer: Peer,
    pub(super) ctrl: mpsc::UnboundedSender<WriterCtrl>,
    pub(super) tracks: HashMap<ParticipantId, Consumer>,
}

/// One participant in a room, owned by its driver (a signaling session or WHIP supervisor).
pub struct Participant {
    pub id: ParticipantId,
    pub meta: ParticipantMeta,
    pub(super) room: Arc<Room>,
    pub(super) sfu: Sfu,
    /// Everything this participant must react to or relay.
    pub events: mpsc::UnboundedReceiver<ParticipantEvent>,
    pub(super) events_tx: mpsc::UnboundedSender<ParticipantEvent>,
    pub(super) publish: Option<Peer>,
    pub(super) level_ext: Arc<AtomicU8>,
    pub(super) subscribe: Option<SubscribeSide>,
    /// Its connections on the media engine, by key (when the room's worker carries them).
    pub(super) engine_publish: Option<String>,
    pub(super) engine_subscribe: Option<String>,
    pub(super) left: bool,
}

fn engine_error(e: EngineError) -> SfuError {
    match e {
        EngineError::BadSdp(m) => SfuError::BadSdp(m),
        EngineError::Stopped => SfuError::ShuttingDown,
        other => SfuError::Peer(PeerError::Webrtc(other.to_string())),
    }
}

impl Participant {
    pub fn room_name(&self) -> &str {
        &self.room.name
    }

    /// Apply a publish offer and return the answer. With `complete`, wait for ICE gathering and
    /// return the SDP with every candidate (WHIP); otherwise candidates trickle as events.
    pub async fn publish(&mut self, offer: String, complete: bool) -> Result<String, SfuError> {
        let started = std::time::Instant::now();
        if !offers_opus(&offer) {
            return Err(SfuError::BadSdp(
                "the offer has no audio m-line with Opus/48000".into(),
            ));
        }
        if let Some(w) = self.sfu.engine_for(&self.room.name) {
            if let Some(id) = extmap_id(&offer, AUDIO_LEVEL_URI) {
                self.level_ext.store(id, Ordering::Relaxed);
            }
            let ctx = PublisherCtx {
                room: Arc::downgrade(&self.room),
                producer: self.id.clone(),
                level_ext: self.level_ext.clone(),
                stats: self.sfu.inner.stats.clone(),
                in_engine: true,
            };
            let hook: PacketHook = Arc::new(move |p, now| {
                ctx.on_packet(p, now);
            });
            let key = format!("{}:publish", self.id);
            let (etx, erx) = mpsc::unbounded_channel();
            let answer = tokio::time::timeout(
                self.sfu.inner.cfg.negotiation_timeout,
                w.publish(
                    &key,
                    self.room.name.clone(),
                    self.id.clone(),
                    offer,
                    etx,
                    Some(hook),
                ),
            )
            .await
            .map_err(|_| PeerError::Timeout("publish negotiation"))?
            .map_err(engine_error)?;
            tokio::spawn(watch_engine(
                erx,
                Target::Publish,
                self.events_tx.clone(),
                self.sfu.inner.cfg.media_timeout,
                None,
            ));
            self.engine_publish = Some(key);
            // Every candidate is in the answer (ICE-lite, one host candidate).
            if !complete {
                let _ = self.events_tx.send(ParticipantEvent::LocalCandidate {
                    target: Target::Publish,
                    candidate: None,
                });
            }
            let mut st = lock(&self.room.state);
            let notices = st.model.set_publishing(&self.id, true)?;
            self.room.dispatch(&st, notices);
            drop(st);
            tracing::debug!(participant = %self.id, ms = started.elapsed().as_millis() as u64, "publish answered (engine)");
            return Ok(answer);
        }
        let desc = RTCSessionDescription::offer(offer.clone())
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let timeout = self.sfu.inner.cfg.negotiation_timeout;
        let mut gather_rx = None;
        if self.publish.is_none() {
            let (ptx, prx) = mpsc::unbounded_channel();
            let peer = self.sfu.inner.factory.create(ptx).await?;
            peer.pc
                .add_transceiver_from_kind(
                    RtpCodecKind::Audio,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await
                .map_err(PeerError::from)?;
            self.publish = Some(peer);
            gather_rx = Some(prx);
        }
        if let Some(id) = extmap_id(&offer, AUDIO_LEVEL_URI) {
            self.level_ext.store(id, Ordering::Relaxed);
        }
        let Some(peer) = self.publish.as_ref() else {
            return Err(SfuError::State("publish connection missing"));
        };
        let negotiate = async {
            peer.pc
                .set_remote_description(desc)
                .await
                .map_err(|e| SfuError::BadSdp(e.to_string()))?;
            let answer = peer.pc.create_answer(None).await.map_err(PeerError::from)?;
            let sdp = answer.sdp.clone();
            peer.pc
                .set_local_description(answer)
                .await
                .map_err(PeerError::from)?;
            Ok::<_, SfuError>(sdp)
        };
        let mut sdp = tokio::time::timeout(timeout, negotiate)
            .await
            .map_err(|_| PeerError::Timeout("publish negotiation"))??;
        if let Some(prx) = gather_rx {
            let ctx = PublisherCtx {
                room: Arc::downgrade(&self.room),
                producer: self.id.clone(),
                level_ext: self.level_ext.clone(),
                stats: self.sfu.inner.stats.clone(),
                in_engine: false,
            };
            let rx = if complete {
                let (full, rest) = complete_local_sdp(peer, prx, timeout).await?;
                sdp = full;
                rest
            } else {
                prx
            };
            tokio::spawn(watch_peer(
                rx,
                self.sfu.inner.factory.clone(),
                Target::Publish,
                self.events_tx.clone(),
                Arc::new(AtomicBool::new(false)),
                self.sfu.inner.cfg.media_timeout,
                Some(ctx),
                None,
            ));
        }
        let mut st = lock(&self.room.state);
        let notices = st.model.set_publishing(&self.id, true)?;
        self.room.dispatch(&st, notices);
        drop(st);
        tracing::debug!(participant = %self.id, ms = started.elapsed().as_millis() as u64, "publish answered");
        Ok(self.sfu.inner.factory.announce_sdp(sdp))
    }

    /// Bring the subscribe connection up to date with the room's producers and create an
    /// offer. Returns the SDP and the tracks it carries.
    pub async fn subscribe_offer(&mut self) -> Result<(String, Vec<SubscribedTrack>), SfuError> {
        let started = std::time::Instant::now();
        if let Some(w) = self.sfu.engine_for(&self.room.name) {
            let (etx, erx) = mpsc::unbounded_channel();
            let key = format!("{}:subscribe", self.id);
            let first = self.engine_subscribe.is_none();
            let wanted = lock(&self.room.state).model.producers_for(&self.id);
            let producers: Vec<ParticipantId> = wanted.iter().map(|m| m.id.clone()).collect();
            let sdp = tokio::time::timeout(
                self.sfu.inner.cfg.negotiation_timeout,
                w.subscribe(
                    &key,
                    self.room.name.clone(),
                    self.id.clone(),
                    producers,
                    etx,
                ),
            )
            .await
            .map_err(|_| PeerError::Timeout("subscribe offer"))?
            .map_err(engine_error)?;
            if first {
                MediaStats::gauge(&self.sfu.inner.stats.subscribers, 1);
                tokio::spawn(watch_engine(
                    erx,
                    Target::Subscribe,
                    self.events_tx.clone(),
                    self.sfu.inner.cfg.media_timeout,
                    Some(ListenerCtx {
                        count: self.room.listeners.clone(),
                        events: self.sfu.inner.events.clone(),
                        room: self.room.name.clone(),
                        participant: self.id.clone(),
                    }),
                ));
                self.engine_subscribe = Some(key);
            }
            let tracks = wanted
                .iter()
                .map(|m| SubscribedTrack {
                    participant_id: m.id.clone(),
                    stream_id: m.id.to_string(),
                    track_id: format!("audio-{}", m.id),
                })
                .collect();
            tracing::debug!(participant = %self.id, ms = started.elapsed().as_millis() as u64, "subscribe offer made (engine)");
            return Ok((sdp, tracks));
        }
        if self.subscribe.is_none() {
            let (ptx, prx) = mpsc::unbounded_channel();
            let peer = self.sfu.inner.factory.create(ptx).await?;
            let connected = Arc::new(AtomicBool::new(false));
            let (sink_tx, sink_rx) = mpsc::channel(self.sfu.inner.cfg.subscriber_queue);
            let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
            tokio::spawn(writer_task(
                sink_rx,
                ctrl_rx,
                connected.clone(),
                self.sfu.inner.stats.clone(),
            ));
            tokio::spawn(watch_peer(
                prx,
                self.sfu.inner.factory.clone(),
                Target::Subscribe,
                self.events_tx.clone(),
                connected,
                self.sfu.inner.cfg.media_timeout,
                None,
                Some(ListenerCtx {
                    count: self.room.listeners.clone(),
                    events: self.sfu.inner.events.clone(),
                    room: self.room.name.clone(),
                    participant: self.id.clone(),
                }),
            ));
            {
                let mut st = lock(&self.room.state);
                st.sinks.push(SubscriberSink {
                    subscriber: self.id.clone(),
                    only: None,
                    tx: sink_tx,
                    engine_room: None,
                });
                self.room.publish_routes(&st);
            }
            MediaStats::gauge(&self.sfu.inner.stats.subscribers, 1);
            self.subscribe = Some(SubscribeSide {
                peer,
                ctrl: ctrl_tx,
                tracks: HashMap::new(),
            });
        }
        let wanted = lock(&self.room.state).model.producers_for(&self.id);
        let timeout = self.sfu.inner.cfg.negotiation_timeout;
        let Some(sub) = self.subscribe.as_mut() else {
            return Err(SfuError::State("subscribe connection missing"));
        };
        let work = async {
            // Remove tracks of producers that are gone.
            let gone: Vec<ParticipantId> = sub
                .tracks
                .keys()
                .filter(|k| !wanted.iter().any(|m| &m.id == *k))
                .cloned()
                .collect();
            for g in gone {
                let _ = sub.ctrl.send(WriterCtrl::Remove {
                    producer: g.clone(),
                });
                if let Some(c) = sub.tracks.remove(&g) {
                    sub.peer
                        .pc
                        .remove_track(&c.sender)
                        .await
                        .map_err(PeerError::from)?;
                }
            }
            for m in &wanted {
                if sub.tracks.contains_key(&m.id) {
                    continue;
                }
                let ssrc = rand::random::<u32>();
                let track = Arc::new(local_track(&m.id, ssrc));
                let sender = sub
                    .peer
                    .pc
                    .add_track(track.clone() as Arc<dyn TrackLocal>)
                    .await
                    .map_err(PeerError::from)?;
                sub.tracks.insert(
                    m.id.clone(),
                    Consumer {
                        track,
                        sender,
                        ssrc,
                        announced: false,
                    },
                );
            }
            let offer = sub
                .peer
                .pc
                .create_offer(None)
                .await
                .map_err(PeerError::from)?;
            let sdp = offer.sdp.clone();
            sub.peer
                .pc
                .set_local_description(offer)
                .await
                .map_err(PeerError::from)?;
            Ok::<_, SfuError>(sdp)
        };
        let sdp = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| PeerError::Timeout("subscribe offer"))??;
        let tracks = wanted
            .iter()
            .map(|m| SubscribedTrack {
                participant_id: m.id.clone(),
                stream_id: m.id.to_string(),
                track_id: format!("audio-{}", m.id),
            })
            .collect();
        tracing::debug!(participant = %self.id, ms = started.elapsed().as_millis() as u64, "subscribe offer made");
        Ok((self.sfu.inner.factory.announce_sdp(sdp), tracks))
    }

    /// Apply the client's answer to the latest subscribe offer; new tracks start flowing.
    pub async fn subscribe_answer(&mut self, sdp: String) -> Result<(), SfuError> {
        let timeout = self.sfu.inner.cfg.negotiation_timeout;
        if let (Some(w), Some(key)) = (
            self.sfu.engine_for(&self.room.name),
            self.engine_subscribe.as_deref(),
        ) {
            return tokio::time::timeout(timeout, w.answer(key, sdp))
                .await
                .map_err(|_| PeerError::Timeout("subscribe answer"))?
                .map_err(engine_error);
        }
        let Some(sub) = self.subscribe.as_mut() else {
            return Err(SfuError::State("no subscribe offer was made"));
        };
        let desc =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        tokio::time::timeout(timeout, sub.peer.pc.set_remote_description(desc))
            .await
            .map_err(|_| PeerError::Timeout("subscribe answer"))?
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        for (producer, c) in sub.tracks.iter_mut() {
            if c.announced {
                continue;
            }
            let pt = negotiated_pt(&c.sender).await;
            let _ = sub.ctrl.send(WriterCtrl::Add {
                producer: producer.clone(),
                track: c.track.clone(),
                ssrc: c.ssrc,
                pt,
            });
            c.announced = true;
        }
        Ok(())
    }

    /// Add a trickled remote candidate (`None` = end of candidates).
    pub async fn add_remote_candidate(
        &self,
        target: Target,
        candidate: Option<RTCIceCandidateInit>,
    ) -> Result<(), SfuError> {
        let on_engine = match target {
            Target::Publish => self.engine_publish.is_some(),
            Target::Subscribe => self.engine_subscribe.is_some(),
        };
        if on_engine {
            // ICE-lite: the engine learns the client's address from its checks.
            return Ok(());
        }
        let peer = match target {
            Target::Publish => self.publish.as_ref(),
            Target::Subscribe => self.subscribe.as_ref().map(|s| &s.peer),
        };
        let Some(peer) = peer else {
            return Err(SfuError::State("that connection does not exist yet"));
        };
        let Some(c) = candidate else {
            return Ok(());
        };
        if c.candidate.trim().is_empty() {
            // An empty candidate string also means end-of-candidates.
            return Ok(());
        }
        peer.pc
            .add_ice_candidate(c)
            .await
            .map_err(|e| SfuError::BadSdp(format!("bad ICE candidate: {e}")))
    }

    /// Leave the room and close both connections.
    pub async fn leave(mut self, reason: LeaveReason) {
        self.detach(reason);
        if let Some(p) = self.publish.take() {
            p.close().await;
        }
        if let Some(s) = self.subscribe.take() {
            s.peer.close().await;
        }
    }

    /// Remove from the room (sync part of leaving).
    pub(super) fn detach(&mut self, reason: LeaveReason) {
        if self.left {
            return;
        }
        self.left = true;
        if let Some(w) = self.sfu.engine_for(&self.room.name) {
            if let Some(k) = self.engine_publish.take() {
                w.close(&k);
            }
            if let Some(k) = self.engine_subscribe.take() {
                w.close(&k);
                MediaStats::gauge(&self.sfu.inner.stats.subscribers, -1);
            }
        }
        let mut st = lock(&self.room.state);
        if let Ok((_, notices)) = st.model.leave(&self.id, reason) {
            st.members.remove(&self.id);
            let before = st.sinks.len();
            st.sinks.retain(|s| s.subscriber != self.id);
            if st.sinks.len() != before {
                MediaStats::gauge(&self.sfu.inner.stats.subscribers, -1);
            }
            self.room.publish_routes(&st);
            self.room.dispatch(&st, notices);
            if st.model.is_empty() {
                st.closed = true;
            }
            MediaStats::gauge(&self.sfu.inner.stats.participants, -1);
        }
        // Under the room's lock: a `Left` can never follow the room's `Closed`, which only the
        // last leaver's `drop_room_if_closed` below can send.
        self.sfu.inner.events.emit(RoomEvent::Left {
            room: self.room.name.to_string(),
            participant: self.id.to_string(),
            reason,
        });
        drop(st);
        lock(&self.room.levels).remove(&self.id);
        self.sfu.drop_room_if_closed(&self.room);
        tracing::info!(room = %self.room.name, participant = %self.id, ?reason, "left");
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.sfu.inner.release_live();
        if self.left {
            return;
        }
        self.detach(LeaveReason::Disconnected);
        let publish = self.publish.take();
        let subscribe = self.subscribe.take();
        if (publish.is_some() || subscribe.is_some())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Some(p) = publish {
                    p.close().await;
                }
                if let Some(s) = subscribe {
                    s.peer.close().await;
                }
            });
        }
    }
}
