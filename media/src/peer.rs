//! The webrtc-rs adapter: builds peer connections for the SFU (Opus only, audio-level header
//! extension, ports from the configured range, ICE timeouts, announced addresses), and turns
//! webrtc-rs callbacks into [`PeerEvent`]s on a channel. Callbacks only translate and forward;
//! the logic that reacts lives in `sfu/` (`io.rs` watches connections).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceCandidateType, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry, SettingEngineBuilder,
    SrtpProtectionProfile, StatsSelector, register_default_interceptors,
};

use crate::level::AUDIO_LEVEL_URI;
use crate::ports::{PortAllocator, PortLease};
use crate::stats::MediaStats;

/// The Opus payload type the SFU offers (the one browsers use).
pub const OPUS_PT: u8 = 111;
/// Opus RTP clock rate.
pub const OPUS_CLOCK_RATE: u32 = 48_000;

/// Connectivity-check interval while a pair is being checked.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Checks per pair before it fails (2 s at [`ICE_CHECK_INTERVAL`]).
const ICE_MAX_BINDING_REQUESTS: u16 = 40;
/// SRTP protection profiles offered or accepted, in order of preference.
pub const SRTP_PROFILES: [SrtpProtectionProfile; 4] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
];

/// How peer connections are built.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub bind_ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    pub announced_ips: Vec<String>,
    pub ice_disconnected: Duration,
    pub ice_failed: Duration,
    /// Run ICE-lite (the server only answers checks; clients always control).
    pub ice_lite: bool,
}

/// What a peer connection reports.
pub enum PeerEvent {
    /// A local ICE candidate to trickle; `None` ends gathering.
    LocalCandidate(Option<RTCIceCandidateInit>),
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
}

/// Errors building or negotiating a peer connection.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no free UDP port in the configured media range")]
    NoPorts,
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("webrtc: {0}")]
    Webrtc(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl From<webrtc::error::Error> for PeerError {
    fn from(e: webrtc::error::Error) -> Self {
        PeerError::Webrtc(e.to_string())
    }
}

/// Builds peer connections.
#[derive(Debug, Clone)]
pub struct PeerFactory {
    cfg: PeerConfig,
    ports: PortAllocator,
    stats: Arc<MediaStats>,
}

/// A peer connection with the port it holds. Closing is explicit ([`Peer::close`]); the port
/// returns to the range when the `Peer` is dropped.
pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    _lease: PortLease,
}

impl Peer {
    pub async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "closing peer connection");
        }
    }
}

struct Handler {
    tx: mpsc::UnboundedSender<PeerEvent>,
    /// The connection itself, set once built: read once connected for its SRTP profile.
    pc: Arc<OnceLock<Weak<dyn PeerConnection>>>,
    stats: Arc<MediaStats>,
}

impl Handler {
    /// Count the SRTP profile the DTLS handshake chose (`srtp_cipher` of the transport stats).
    async fn count_srtp_profile(&self) {
        let Some(pc) = self.pc.get().and_then(Weak::upgrade) else {
            return;
        };
        let report = pc
            .get_stats(std::time::Instant::now(), StatsSelector::None)
            .await;
        let cipher = report.transport().map(|t| t.srtp_cipher.clone());
        let counter = match cipher.as_deref() {
            Some(c) if c.contains("GCM") => &self.stats.srtp_aead_gcm,
            Some(c) if !c.is_empty() => &self.stats.srtp_aes_cm,
            _ => return,
        };
        MediaStats::add(counter, 1);
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.tx.send(PeerEvent::LocalCandidate(Some(init)));
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.tx.send(PeerEvent::LocalCandidate(None));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.count_srtp_profile().await;
        }
        let _ = self.tx.send(PeerEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tx.send(PeerEvent::Track(track));
    }
}

/// The codec every SFU connection negotiates: Opus 48 kHz stereo with in-band FEC.
pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: OPUS_CLOCK_RATE,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

impl PeerFactory {
    /// `stats` gets the connections' SRTP profiles.
    pub fn new(cfg: PeerConfig, stats: Arc<MediaStats>) -> Self {
        let ports = PortAllocator::new(cfg.port_min, cfg.port_max);
        PeerFactory { cfg, ports, stats }
    }

    pub fn ports(&self) -> &PortAllocator {
        &self.ports
    }

    /// Build a peer connection bound to a leased port; its events go to `tx`.
    pub async fn create(&self, tx: mpsc::UnboundedSender<PeerEvent>) -> Result<Peer, PeerError> {
        // A port may be taken by another process: try a few leases before giving up.
        let mut last_err = PeerError::NoPorts;
        for _ in 0..8 {
            let lease = self.ports.lease().ok_or(PeerError::NoPorts)?;
            match self.build(lease.port(), tx.clone()).await {
                Ok(pc) => {
                    return Ok(Peer { pc, _lease: lease });
                }
                Err(e) => {
                    tracing::debug!(port = lease.port(), error = %e, "peer connection bind failed");
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }

    async fn build(
        &self,
        port: u16,
        tx: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<Arc<dyn PeerConnection>, PeerError> {
        let mut media_engine = MediaEngine::default();
        media_engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )?;
        media_engine.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;

        let mut settings = SettingEngineBuilder::new()
            .with_ice_timeouts(
                Some(self.cfg.ice_disconnected),
                Some(self.cfg.ice_failed),
                Some(Duration::from_secs(2)),
            )
            .with_include_loopback_candidate(self.cfg.bind_ip.is_loopback())
            // A client behind NAT (and every client of a server-controlled subscribe
            // connection) is first known by the address of its own check: a peer-reflexive
            // candidate. rtc-ice waits 1 s by default before nominating one; that wait was most
            // of a join (docs/join-latency-notes.md). `Some(0)`: `None` means the default.
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            // Checks every 50 ms instead of 200 ms while connecting (40 tries: the same 2 s
            // budget per pair). Joins only; keepalives are separate.
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            // Answer `a=setup:passive`: the client sends the first DTLS flight as soon as its
            // ICE pair is up. As the DTLS client, the server's ClientHello waited for rtc's
            // next timer tick (up to 200 ms per join; docs/join-latency-notes.md). Janus,
            // mediasoup and LiveKit answer passive too.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            // AES-GCM first (cheaper per packet than AES-CM + HMAC-SHA1); the others for
            // clients that lack it. As the DTLS server the client's order decides; browsers
            // put GCM first.
            .with_srtp_protection_profiles(SRTP_PROFILES.to_vec())
            .with_lite(self.cfg.ice_lite);
        if !self.cfg.announced_ips.is_empty() {
            settings = settings
                .with_nat_1to1_ips(self.cfg.announced_ips.clone(), RTCIceCandidateType::Host);
        }
        let config = RTCConfigurationBuilder::new().build();
        let handle = Arc::new(OnceLock::new());
        let handler = Handler {
            tx,
            pc: handle.clone(),
            stats: self.stats.clone(),
        };
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_media_engine(media_engine)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(handler))
            .with_udp_addrs(vec![format!("{}:{}", self.cfg.bind_ip, port)])
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let _ = handle.set(Arc::downgrade(&pc));
        Ok(pc)
    }
}

impl PeerFactory {
    /// The address to announce instead of the bind address, if configured.
    fn announced(&self) -> Option<&str> {
        self.cfg.announced_ips.first().map(String::as_str)
    }

    /// Rewrite a local candidate for announcement (1:1 NAT): the bind IP becomes the
    /// announced IP. Without announced IPs the candidate is unchanged.
    pub fn announce_candidate(&self, mut c: RTCIceCandidateInit) -> RTCIceCandidateInit {
        if let Some(ip) = self.announced() {
            c.candidate = replace_candidate_ip(&c.candidate, &self.cfg.bind_ip.to_string(), ip);
        }
        c
    }

    /// Rewrite every `a=candidate` line of a local SDP for announcement.
    pub fn announce_sdp(&self, sdp: String) -> String {
        let Some(ip) = self.announced() else {
            return sdp;
        };
        let bind = self.cfg.bind_ip.to_string();
        let mut out = String::with_capacity(sdp.len());
        for line in sdp.split_inclusive('\n') {
            if line.starts_with("a=candidate:") {
                out.push_str(&replace_candidate_ip(line, &bind, ip));
            } else {
                out.push_str(line);
            }
        }
        out
    }
}

/// Replace the connection address (5th field) of a candidate line when it equals `from`.
fn replace_candidate_ip(line: &str, from: &str, to: &str) -> String {
    let mut fields: Vec<&str> = line.split(' ').collect();
    if fields.len() > 5 && fields[4] == from {
        fields[4] = to;
    }
    fields.join(" ")
}

/// The RTP header extension id the remote side chose for `uri`, read from its SDP.
pub fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("a=extmap:")?;
        let (id, tail) = rest.split_once(' ')?;
        let id = id.split('/').next()?.parse::<u8>().ok()?;
        (tail.split_whitespace().next()? == uri).then_some(id)
    })
}

/// Whether an SDP has at least one audio m-line offering Opus.
pub fn offers_opus(sdp: &str) -> bool {
    let mut in_audio = false;
    for l in sdp.lines() {
        let l = l.trim();
        if let Some(m) = l.strip_prefix("m=") {
            in_audio = m.starts_with("audio ");
        } else if in_audio
            && l.starts_with("a=rtpmap:")
            && l.to_ascii_lowercase().contains(" opus/48000")
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
        a=extmap:3/sendonly http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n";

    #[test]
    fn announced_ip_replaces_the_bind_ip_in_candidates_and_sdp() {
        let f = PeerFactory::new(
            PeerConfig {
                bind_ip: "10.0.0.5".parse().expect("ip"),
                port_min: 40000,
                port_max: 40001,
                announced_ips: vec!["203.0.113.7".into()],
                ice_disconnected: Duration::from_secs(1),
                ice_failed: Duration::from_secs(2),
                ice_lite: false,
            },
            Arc::default(),
        );
        let c = f.announce_candidate(RTCIceCandidateInit {
            candidate: "candidate:1 1 udp 2130706431 10.0.0.5 40000 typ host".into(),
            ..Default::default()
        });
        assert_eq!(
            c.candidate,
            "candidate:1 1 udp 2130706431 203.0.113.7 40000 typ host"
        );
        let sdp = f.announce_sdp(
            "v=0\r\na=candidate:1 1 udp 2130706431 10.0.0.5 40000 typ host\r\nc=IN IP4 10.0.0.5\r\n"
                .into(),
        );
        assert!(sdp.contains("203.0.113.7 40000 typ host\r\n"));
        assert!(!sdp.contains("10.0.0.5 40000"));
    }

    #[test]
    fn finds_extmap_ids_and_opus() {
        assert_eq!(extmap_id(SDP, AUDIO_LEVEL_URI), Some(1));
        assert_eq!(
            extmap_id(
                SDP,
                "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
            ),
            Some(3)
        );
        assert_eq!(extmap_id(SDP, "urn:nope"), None);
        assert!(offers_opus(SDP));
        assert!(!offers_opus(
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
        ));
        assert!(!offers_opus(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n"
        ));
    }
}
