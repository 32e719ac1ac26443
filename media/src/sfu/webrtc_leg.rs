//! WebRTC media for a SIP leg (ICE + DTLS-SRTP, Opus): what FreeSWITCH sends with
//! `media_webrtc=true`. One peer connection with one sendrecv audio stream; the offer must
//! already be in a form `rtc` takes (`signaling::sip::sdp::webrtc_offer`). The leg's engine
//! (`crate::pstn`) reads the remote track's packets and writes its mix to the local track, as
//! it would on a plain RTP socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rtc::rtp;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemoteEvent;
use webrtc::peer_connection::RTCPeerConnectionState;

use super::negotiate::{answer_with_track, complete_local_sdp, local_track};
use super::{Sfu, SfuError};
use crate::peer::{Peer, PeerEvent};

/// Packets queued from the remote track before drops (one second at 20 ms).
const INCOMING_QUEUE: usize = 50;

/// A SIP leg's WebRTC transport.
pub struct WebRtcMedia {
    pub(crate) peer: Peer,
    pub(crate) local: Arc<TrackLocalStaticRTP>,
    pub(crate) ssrc: u32,
    /// The remote track's RTP, marshalled (the engine parses datagrams).
    pub(crate) incoming: mpsc::Receiver<Vec<u8>>,
    /// The Opus payload type the answer chose (the offerer's number).
    pub pt: u8,
    /// DTLS is up: packets written before would each be refused (and logged) by `rtc`.
    pub(crate) connected: Arc<AtomicBool>,
}

impl WebRtcMedia {
    /// Write one RTP packet (marshalled) on the local track.
    pub(crate) async fn send(&self, pkt: &[u8]) -> bool {
        if !self.connected.load(Ordering::Relaxed) {
            return false;
        }
        let Some(p) = crate::pstn::rtp::parse(pkt) else {
            return false;
        };
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: p.marker,
                payload_type: p.pt,
                sequence_number: p.sequence,
                timestamp: p.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: bytes::Bytes::copy_from_slice(p.payload),
        };
        self.local.write_rtp(packet).await.is_ok()
    }

    pub(crate) async fn close(&self) {
        self.peer.close().await;
    }
}

impl Sfu {
    /// Answer a WebRTC-over-SIP offer: returns the complete answer (every candidate: a SIP
    /// answer cannot trickle) and the transport for the leg's engine.
    pub async fn webrtc_leg(&self, offer: String) -> Result<(String, WebRtcMedia), SfuError> {
        if self.is_closing() {
            return Err(SfuError::ShuttingDown);
        }
        let (ptx, prx) = mpsc::unbounded_channel();
        let peer = self.inner.factory.create(ptx).await?;
        let ssrc = rand::random::<u32>();
        let id: crate::room::ParticipantId = Arc::from("pstn");
        let track = Arc::new(local_track(&id, ssrc));
        let timeout = self.inner.cfg.negotiation_timeout;
        let pt = answer_with_track(&peer, &track, offer, timeout, "SIP WebRTC negotiation").await?;
        let (sdp, mut events) = match complete_local_sdp(&peer, prx, timeout).await {
            Ok(v) => v,
            Err(e) => {
                peer.close().await;
                return Err(e);
            }
        };
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        let stats = self.inner.stats.clone();
        let connected = Arc::new(AtomicBool::new(false));
        let up = connected.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    PeerEvent::Track(t) => {
                        let tx = in_tx.clone();
                        let stats = stats.clone();
                        tokio::spawn(async move {
                            while let Some(ev) = t.poll().await {
                                match ev {
                                    TrackRemoteEvent::OnRtpPacket(p) => {
                                        let b = crate::pstn::rtp::build(
                                            p.header.payload_type,
                                            p.header.marker,
                                            p.header.sequence_number,
                                            p.header.timestamp,
                                            p.header.ssrc,
                                            &p.payload,
                                        );
                                        if tx.try_send(b).is_err() {
                                            crate::stats::MediaStats::add(
                                                &stats.subscriber_drops,
                                                1,
                                            );
                                        }
                                    }
                                    TrackRemoteEvent::OnEnded => break,
                                    _ => {}
                                }
                            }
                        });
                    }
                    PeerEvent::State(RTCPeerConnectionState::Connected) => {
                        up.store(true, Ordering::Relaxed);
                    }
                    PeerEvent::State(
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed,
                    ) => {
                        up.store(false, Ordering::Relaxed);
                        break;
                    }
                    _ => {}
                }
            }
        });
        let answer = self.inner.factory.announce_sdp(sdp);
        Ok((
            answer,
            WebRtcMedia {
                peer,
                local: track,
                ssrc,
                incoming: in_rx,
                pt,
                connected,
            },
        ))
    }
}
