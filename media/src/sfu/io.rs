//! The media hot path with webrtc-rs: a watcher per connection (candidates, state, media
//! timeout), a read loop per publisher track that fans packets out, and a writer task per
//! subscriber that rewrites and sends them.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::RTCPeerConnectionState;

use super::{Emitter, ParticipantEvent, Room, RoomEvent, Target, lock};
use crate::engine::PeerEvent as EnginePeerEvent;
use crate::forward::{ConsumerSet, MediaPacket, SinkMsg, fan_out};
use crate::level::parse_audio_level;
use crate::peer::{OPUS_CLOCK_RATE, PeerEvent, PeerFactory};
use crate::room::ParticipantId;
use crate::stats::MediaStats;

/// Per-connection watcher: forwards local candidates, tracks connection state, starts the
/// publisher read loop for incoming tracks, and reports a media timeout when the connection
/// fails or does not (re)connect in time.
#[allow(clippy::too_many_arguments)]
pub(super) async fn watch_peer(
    mut rx: mpsc::UnboundedReceiver<PeerEvent>,
    factory: PeerFactory,
    target: Target,
    events: mpsc::UnboundedSender<ParticipantEvent>,
    connected: Arc<AtomicBool>,
    media_timeout: Duration,
    publisher: Option<PublisherCtx>,
    listener: Option<ListenerCtx>,
) {
    let mut deadline = Some(tokio::time::Instant::now() + media_timeout);
    let mut counted = false;
    let mut count = |up: bool| {
        if let Some(l) = &listener {
            l.set(&mut counted, up);
        }
    };
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                None => break,
                Some(PeerEvent::LocalCandidate(c)) => {
                    let candidate = c.map(|c| factory.announce_candidate(c));
                    let _ = events.send(ParticipantEvent::LocalCandidate { target, candidate });
                }
                Some(PeerEvent::State(s)) => {
                    tracing::debug!(?target, state = %s, "peer connection state");
                    match s {
                        RTCPeerConnectionState::Connected => {
                            connected.store(true, Ordering::Relaxed);
                            count(true);
                            deadline = None;
                        }
                        RTCPeerConnectionState::Disconnected => {
                            connected.store(false, Ordering::Relaxed);
                            count(false);
                            deadline.get_or_insert(tokio::time::Instant::now() + media_timeout);
                        }
                        RTCPeerConnectionState::Failed => {
                            connected.store(false, Ordering::Relaxed);
                            count(false);
                            deadline = None;
                            let _ = events.send(ParticipantEvent::MediaTimeout(target));
                        }
                        RTCPeerConnectionState::Closed => {
                            connected.store(false, Ordering::Relaxed);
                            count(false);
                            break;
                        }
                        _ => {}
                    }
                }
                Some(PeerEvent::Track(track)) => {
                    if let Some(ctx) = &publisher {
                        tokio::spawn(read_loop(track, ctx.clone()));
                    }
                }
            },
            _ = sleep => {
                deadline = None;
                let _ = events.send(ParticipantEvent::MediaTimeout(target));
            }
        }
    }
    count(false);
}

/// A subscribe connection's place in its room's listener count.
pub(super) struct ListenerCtx {
    pub(super) count: Arc<AtomicUsize>,
    pub(super) events: Emitter,
    pub(super) room: Arc<str>,
    pub(super) participant: ParticipantId,
}

impl ListenerCtx {
    /// Count this connection in (`up`) or out of its room's listeners, once per change
    /// (`counted` is whether it is counted now); coming in emits [`RoomEvent::Listening`].
    fn set(&self, counted: &mut bool, up: bool) {
        if up == *counted {
            return;
        }
        if up {
            self.count.fetch_add(1, Ordering::Relaxed);
            self.events.emit(RoomEvent::Listening {
                room: self.room.to_string(),
                participant: self.participant.to_string(),
            });
        } else {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        *counted = up;
    }
}

#[derive(Clone)]
pub(super) struct PublisherCtx {
    pub(super) room: Weak<Room>,
    pub(super) producer: ParticipantId,
    pub(super) level_ext: Arc<AtomicU8>,
    pub(super) stats: Arc<MediaStats>,
    /// Read by a media engine worker (which forwards to its own connections itself).
    pub(super) in_engine: bool,
}

impl PublisherCtx {
    /// One packet of the publisher: levels, counters, and the room's fan-out (subscriber
    /// queues, taps, phone legs, the engine's queue). False when the room is gone.
    pub(super) fn on_packet(&self, pkt: &rtp::Packet, now: Instant) -> bool {
        let Some(room) = self.room.upgrade() else {
            return false;
        };
        let ext = self.level_ext.load(Ordering::Relaxed);
        let level = if ext != 0 {
            pkt.header
                .get_extension(ext)
                .and_then(|b| parse_audio_level(&b))
                .map(|(l, _)| l)
        } else {
            None
        };
        MediaStats::add(&self.stats.packets_in, 1);
        MediaStats::add(&self.stats.bytes_in, pkt.payload.len() as u64);
        if let Some(l) = level {
            lock(&room.levels).observe(&self.producer, l, now);
        }
        let routes = room.routes.load();
        if routes.taps.is_empty()
            && routes.sinks.iter().all(|s| s.engine_room.is_some())
            && self.in_engine
        {
            // Nobody outside the engine to hand it to.
            return true;
        }
        let mp = Arc::new(MediaPacket {
            producer: self.producer.clone(),
            ssrc: pkt.header.ssrc,
            payload_type: pkt.header.payload_type,
            sequence: pkt.header.sequence_number,
            timestamp: pkt.header.timestamp,
            marker: pkt.header.marker,
            audio_level: level,
            arrival: now,
            arrival_wall: SystemTime::now(),
            payload: pkt.payload.clone(),
            system: false,
            only_to: None,
            in_engine: self.in_engine,
        });
        fan_out(&routes, &mp, &self.stats);
        true
    }
}

/// The publisher's hot path (webrtc-rs connections): every packet of its track fanned out to
/// the room's subscribers and taps.
pub(super) async fn read_loop(track: Arc<dyn TrackRemote>, ctx: PublisherCtx) {
    if track.kind().await != RtpCodecKind::Audio {
        tracing::warn!(participant = %ctx.producer, "ignoring a non-audio track");
        return;
    }
    while let Some(ev) = track.poll().await {
        let pkt: rtp::Packet = match ev {
            TrackRemoteEvent::OnRtpPacket(p) => p,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        if !ctx.on_packet(&pkt, Instant::now()) {
            break;
        }
    }
    tracing::debug!(participant = %ctx.producer, "publisher track ended");
}

/// [`watch_peer`] for a media engine connection: connection state to listener counts and media
/// timeouts.
pub(super) async fn watch_engine(
    mut rx: mpsc::UnboundedReceiver<EnginePeerEvent>,
    target: Target,
    events: mpsc::UnboundedSender<ParticipantEvent>,
    media_timeout: Duration,
    listener: Option<ListenerCtx>,
) {
    let mut deadline = Some(tokio::time::Instant::now() + media_timeout);
    let mut counted = false;
    let mut count = |up: bool| {
        if let Some(l) = &listener {
            l.set(&mut counted, up);
        }
    };
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                // The connection was closed by its owner (its sender went with it).
                None => break,
                Some(EnginePeerEvent::Connected) => {
                    tracing::debug!(?target, "engine connection connected");
                    count(true);
                    deadline = None;
                }
                Some(EnginePeerEvent::Disconnected) => {
                    count(false);
                    deadline.get_or_insert(tokio::time::Instant::now() + media_timeout);
                }
                Some(EnginePeerEvent::Closed) => {
                    let _ = events.send(ParticipantEvent::MediaTimeout(target));
                    break;
                }
                Some(EnginePeerEvent::Offer(_)) => {}
            },
            _ = sleep => {
                deadline = None;
                let _ = events.send(ParticipantEvent::MediaTimeout(target));
            }
        }
    }
    count(false);
}

pub(super) enum WriterCtrl {
    Add {
        producer: ParticipantId,
        track: Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        pt: u8,
    },
    Remove {
        producer: ParticipantId,
    },
}

/// A subscriber's writer: owns its consumers (producer -> local track + rewriter) and writes
/// every queued packet with that output's SSRC, sequence and timestamp.
pub(super) async fn writer_task(
    mut rx: mpsc::Receiver<SinkMsg>,
    mut ctrl: mpsc::UnboundedReceiver<WriterCtrl>,
    connected: Arc<AtomicBool>,
    stats: Arc<MediaStats>,
) {
    let mut consumers: ConsumerSet<(Arc<TrackLocalStaticRTP>, u8)> =
        ConsumerSet::new(OPUS_CLOCK_RATE);
    loop {
        tokio::select! {
            biased;
            c = ctrl.recv() => match c {
                Some(WriterCtrl::Add { producer, track, ssrc, pt }) => {
                    consumers.add(producer, (track, pt), ssrc);
                }
                Some(WriterCtrl::Remove { producer }) => {
                    consumers.remove(&producer);
                }
                None => break,
            },
            m = rx.recv() => {
                let Some(SinkMsg::Packet(p)) = m else { break };
                if !connected.load(Ordering::Relaxed) {
                    continue;
                }
                let Some(((track, pt), h)) = consumers.route(&p) else { continue };
                let packet = rtp::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        marker: p.marker,
                        payload_type: *pt,
                        sequence_number: h.sequence,
                        timestamp: h.timestamp,
                        ssrc: h.ssrc,
                        ..Default::default()
                    },
                    payload: p.payload.clone(),
                };
                let len = packet.payload.len() as u64;
                match track.write_rtp(packet).await {
                    Ok(()) => {
                        MediaStats::add(&stats.packets_out, 1);
                        MediaStats::add(&stats.bytes_out, len);
                    }
                    Err(e) => {
                        MediaStats::add(&stats.forward_errors, 1);
                        tracing::trace!(error = %e, "write_rtp");
                    }
                }
            }
        }
    }
}
