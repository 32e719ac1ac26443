//! SDP steps shared by every kind of connection: the local track for one producer, answering
//! an offer with a track, waiting for a complete local SDP, the negotiated Opus payload type.

use std::sync::Arc;
use std::time::Duration;

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::RTCSessionDescription;
use webrtc::rtp_transceiver::RtpSender;

use super::SfuError;
use crate::peer::{OPUS_PT, Peer, PeerError, PeerEvent, opus_codec};
use crate::room::ParticipantId;

pub(super) fn local_track(producer: &ParticipantId, ssrc: u32) -> TrackLocalStaticRTP {
    TrackLocalStaticRTP::new(MediaStreamTrack::new(
        producer.to_string(),
        format!("audio-{producer}"),
        format!("audio-{producer}"),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec(),
            ..Default::default()
        }],
    ))
}

/// The Opus payload type negotiated on a sender (our offer uses [`OPUS_PT`]; as answerer the
/// remote's choice wins).
pub(super) async fn negotiated_pt(sender: &Arc<dyn RtpSender>) -> u8 {
    match sender.get_parameters().await {
        Ok(p) => p
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("audio/opus"))
            .map(|c| c.payload_type)
            .unwrap_or(OPUS_PT),
        Err(_) => OPUS_PT,
    }
}

/// Answer `offer` on `peer` with `track` as what it sends (WHEP, and a SIP leg's WebRTC
/// media), bounded by `timeout`; returns the Opus payload type the answer chose. On failure the
/// peer is closed.
pub(super) async fn answer_with_track(
    peer: &Peer,
    track: &Arc<TrackLocalStaticRTP>,
    offer: String,
    timeout: Duration,
    what: &'static str,
) -> Result<u8, SfuError> {
    let negotiated = async {
        let sender = peer
            .pc
            .add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(PeerError::from)?;
        let desc =
            RTCSessionDescription::offer(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        peer.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let answer = peer.pc.create_answer(None).await.map_err(PeerError::from)?;
        peer.pc
            .set_local_description(answer)
            .await
            .map_err(PeerError::from)?;
        Ok::<_, SfuError>(negotiated_pt(&sender).await)
    };
    match tokio::time::timeout(timeout, negotiated).await {
        Ok(Ok(pt)) => Ok(pt),
        Ok(Err(e)) => {
            peer.close().await;
            Err(e)
        }
        Err(_) => {
            peer.close().await;
            Err(PeerError::Timeout(what).into())
        }
    }
}

/// Wait until ICE gathering completes (bounded), then return the local SDP with every
/// candidate, and the event receiver for further use.
pub(super) async fn complete_local_sdp(
    peer: &Peer,
    mut rx: mpsc::UnboundedReceiver<PeerEvent>,
    timeout: Duration,
) -> Result<(String, mpsc::UnboundedReceiver<PeerEvent>), SfuError> {
    let mut early = Vec::new();
    let gathered = tokio::time::timeout(timeout, async {
        while let Some(ev) = rx.recv().await {
            match ev {
                PeerEvent::LocalCandidate(None) => return true,
                other => early.push(other),
            }
        }
        false
    })
    .await;
    if !matches!(gathered, Ok(true)) {
        return Err(PeerError::Timeout("ICE gathering").into());
    }
    // Put back what arrived meanwhile (state changes, tracks) for the watcher.
    let (tx, new_rx) = mpsc::unbounded_channel();
    for ev in early {
        if !matches!(ev, PeerEvent::LocalCandidate(_)) {
            let _ = tx.send(ev);
        }
    }
    tokio::spawn(async move {
        let mut rx = rx;
        while let Some(ev) = rx.recv().await {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    let sdp = peer
        .pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .ok_or(SfuError::State("no local description"))?;
    Ok((sdp, new_rx))
}
