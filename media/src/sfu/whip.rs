//! WHIP publishers and WHEP subscribers: one complete SDP offer in, one complete answer out;
//! each lives in a supervisor task until its resource is deleted or its media times out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::io::{ListenerCtx, WriterCtrl, watch_peer, writer_task};
use super::negotiate::{answer_with_track, complete_local_sdp, local_track};
use super::{ParticipantEvent, Room, Sfu, SfuError, Target, lock, new_id};
use crate::forward::SubscriberSink;
use crate::peer::{Peer, offers_opus};
use crate::room::{LeaveReason, ParticipantId, ParticipantKind};
use crate::stats::MediaStats;

impl Sfu {
    /// WHIP: join `room` as a publisher from a complete SDP offer; returns the participant id
    /// and the complete answer. The participant stays until [`Sfu::end_resource`] or its media
    /// times out.
    pub async fn whip_publish(
        &self,
        room: &str,
        display_name: String,
        role: String,
        offer: String,
    ) -> Result<(ParticipantId, String), SfuError> {
        let (mut p, _) = self.join(room, display_name, role, ParticipantKind::Whip)?;
        let answer = match p.publish(offer, true).await {
            Ok(a) => a,
            Err(e) => {
                p.leave(LeaveReason::Left).await;
                return Err(e);
            }
        };
        let id = p.id.clone();
        let (stop_tx, mut stop_rx) = oneshot::channel();
        lock(&self.inner.resources).insert(id.to_string(), stop_tx);
        let sfu = self.clone();
        tokio::spawn(async move {
            let reason = loop {
                tokio::select! {
                    r = &mut stop_rx => break r.unwrap_or(LeaveReason::Left),
                    ev = p.events.recv() => match ev {
                        Some(ParticipantEvent::MediaTimeout(_)) => break LeaveReason::MediaTimeout,
                        Some(ParticipantEvent::Removed(r)) => break r,
                        Some(_) => {}
                        None => break LeaveReason::Left,
                    },
                }
            };
            lock(&sfu.inner.resources).remove(p.id.as_ref());
            p.leave(reason).await;
        });
        Ok((id, answer))
    }

    /// WHEP: subscribe to one participant's audio from a complete SDP offer; returns the
    /// subscriber id and the complete answer.
    pub async fn whep_subscribe(
        &self,
        room: &str,
        producer: &str,
        offer: String,
    ) -> Result<(String, String), SfuError> {
        if self.is_closing() {
            return Err(SfuError::ShuttingDown);
        }
        let r = lock(&self.inner.rooms)
            .get(room)
            .cloned()
            .ok_or_else(|| SfuError::NotFound(format!("no room `{room}`")))?;
        let producer_id: ParticipantId = {
            let st = lock(&r.state);
            let m = st.model.get(producer).ok_or_else(|| {
                SfuError::NotFound(format!("no participant `{producer}` in room `{room}`"))
            })?;
            m.id.clone()
        };
        if !offers_opus(&offer) {
            return Err(SfuError::BadSdp(
                "the offer has no Opus audio m-line".into(),
            ));
        }
        let sub_id = new_id();
        let sub_pid: ParticipantId = Arc::from(sub_id.as_str());
        let (ptx, prx) = mpsc::unbounded_channel();
        let peer = self.inner.factory.create(ptx).await?;
        let ssrc = rand::random::<u32>();
        let track = Arc::new(local_track(&producer_id, ssrc));
        let timeout = self.inner.cfg.negotiation_timeout;
        let pt = answer_with_track(&peer, &track, offer, timeout, "WHEP negotiation").await?;
        let answer = match complete_local_sdp(&peer, prx, timeout).await {
            Ok((sdp, rest)) => {
                let connected = Arc::new(AtomicBool::new(false));
                let (sink_tx, sink_rx) = mpsc::channel(self.inner.cfg.subscriber_queue);
                let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
                let _ = ctrl_tx.send(WriterCtrl::Add {
                    producer: producer_id.clone(),
                    track,
                    ssrc,
                    pt,
                });
                tokio::spawn(writer_task(
                    sink_rx,
                    ctrl_rx,
                    connected.clone(),
                    self.inner.stats.clone(),
                ));
                {
                    let mut st = lock(&r.state);
                    st.sinks.push(SubscriberSink {
                        subscriber: sub_pid.clone(),
                        only: Some(producer_id.clone()),
                        tx: sink_tx,
                        engine_room: None,
                    });
                    r.publish_routes(&st);
                }
                MediaStats::gauge(&self.inner.stats.subscribers, 1);
                self.inner.live.fetch_add(1, Ordering::Relaxed);
                let (stop_tx, stop_rx) = oneshot::channel();
                lock(&self.inner.resources).insert(sub_id.clone(), stop_tx);
                let (ev_tx, ev_rx) = mpsc::unbounded_channel();
                tokio::spawn(watch_peer(
                    rest,
                    self.inner.factory.clone(),
                    Target::Subscribe,
                    ev_tx,
                    connected,
                    self.inner.cfg.media_timeout,
                    None,
                    Some(ListenerCtx {
                        count: r.listeners.clone(),
                        events: self.inner.events.clone(),
                        room: r.name.clone(),
                        participant: sub_pid.clone(),
                    }),
                ));
                tokio::spawn(whep_supervisor(
                    self.clone(),
                    r.clone(),
                    sub_pid,
                    peer,
                    stop_rx,
                    ev_rx,
                    ctrl_tx,
                ));
                sdp
            }
            Err(e) => {
                peer.close().await;
                return Err(e);
            }
        };
        Ok((sub_id, self.inner.factory.announce_sdp(answer)))
    }
}

pub(super) async fn whep_supervisor(
    sfu: Sfu,
    room: Arc<Room>,
    sub: ParticipantId,
    peer: Peer,
    mut stop: oneshot::Receiver<LeaveReason>,
    mut events: mpsc::UnboundedReceiver<ParticipantEvent>,
    _ctrl: mpsc::UnboundedSender<WriterCtrl>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = events.recv() => match ev {
                Some(ParticipantEvent::MediaTimeout(_)) | None => break,
                Some(_) => {}
            },
        }
    }
    lock(&sfu.inner.resources).remove(sub.as_ref());
    {
        let mut st = lock(&room.state);
        st.sinks.retain(|s| s.subscriber != sub);
        room.publish_routes(&st);
    }
    MediaStats::gauge(&sfu.inner.stats.subscribers, -1);
    peer.close().await;
    sfu.inner.release_live();
    tracing::info!(subscriber = %sub, "WHEP session ended");
}
