//! The SIP bridge: phone legs from the PBX (FreeSWITCH) and carrier trunks join calls as
//! participants, and outbound calls dial through the trunk.
//!
//! - `mod.rs`: the endpoint (UDP and TCP on `[sip] listen`), the intake of every request
//!   (source allow-list, INVITE rate per source, leg cap, OPTIONS), and [`Sip`], the handle
//!   the HTTP API uses (dial, hang up, keypad).
//! - `inbound.rs`: an INVITE in: routing by Request-URI user (call id or number), admission
//!   through the same path as `/ws` and WHIP, negotiation, 180 then 200.
//! - `outbound.rs`: call-create `kind=pstn, direction=outbound` dials `to` via `trunk_uri`.
//! - `leg.rs`: one task per answered leg: its dialog (re-INVITE/UPDATE/INFO/BYE, session
//!   timer), its media (`media::pstn`), its digits.
//!
//! The pure rules (SDP, routing, RFC 4028) are in `signaling::sip`.
//!
//! **Why rsipstack** (pinned `=0.7.14`): among maintained Rust SIP stacks it is the one with
//! every RFC 3261 piece the bridge needs on one tokio endpoint: UDP, TCP and rustls TLS
//! transports, client and server INVITE/non-INVITE transactions with their timers, UAS and
//! UAC dialogs (re-INVITE, UPDATE, INFO, CANCEL), UAC digest with automatic 401/407 retry, and
//! a parser that survived 200 000 mutated INVITEs without a panic when we measured it. ezk-sip
//! was the alternative: nicer call API, but no UAS digest, a less exact session timer and a
//! slower release pace. rsipstack's API moves between minor versions, hence the exact pin.
//! It logs raw messages (phone numbers included) at info: `src/cli.rs` caps it at error.

mod inbound;
mod leg;
mod outbound;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use media::Sfu;
use media::ports::PortAllocator;
use media::pstn::PstnStats;
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::{HeadersExt, Method, StatusCode, ToTypedHeader};
use rsipstack::transaction::TransactionReceiver;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{TcpListenerConnection, TransportLayer};
use signaling::sip::sdp::Codec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::calls::Calls;
use crate::config::SipConfig;

/// An IP network (`10.0.0.0/8`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, bits) = match s.trim().split_once('/') {
            Some((ip, b)) => (ip.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
            None => {
                let ip = s.trim().parse::<IpAddr>().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Cidr { net: ip, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.bits as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.bits as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// SIP counters for `/metrics`.
#[derive(Debug, Default)]
pub struct SipStats {
    pub invites: AtomicU64,
    pub answered: AtomicU64,
    /// Final responses we sent to INVITEs, by class of refusal.
    pub refused_source: AtomicU64,
    /// 407 challenges sent, and INVITEs refused (403) for wrong credentials.
    pub challenged: AtomicU64,
    pub refused_auth: AtomicU64,
    pub refused_rate: AtomicU64,
    pub refused_capacity: AtomicU64,
    pub not_found: AtomicU64,
    pub not_acceptable: AtomicU64,
    pub dropped_source: AtomicU64,
    pub cancelled: AtomicU64,
    pub outbound: AtomicU64,
    pub outbound_answered: AtomicU64,
    pub outbound_failed: AtomicU64,
    pub dtmf: AtomicU64,
    pub session_expired: AtomicU64,
}

/// Orders for a leg from the rest of the server.
#[derive(Debug)]
pub enum LegCtl {
    /// Hang up (BYE, or CANCEL before the answer).
    Hangup,
    /// Send these keys to the phone.
    Digits(String),
}

struct LegEntry {
    id: u64,
    /// The room participant, once the leg has joined.
    participant: Option<String>,
    ctl: mpsc::UnboundedSender<LegCtl>,
}

pub(crate) struct Inner {
    cfg: SipConfig,
    dialogs: Arc<DialogLayer>,
    sfu: Sfu,
    calls: Calls,
    ports: PortAllocator,
    media_ip: IpAddr,
    /// Host in our Contact and SDP.
    host: String,
    local: SocketAddr,
    codecs: Vec<Codec>,
    pub(crate) pstn: Arc<PstnStats>,
    pub(crate) stats: SipStats,
    legs: Mutex<HashMap<String, Vec<LegEntry>>>,
    next_leg: AtomicU64,
    /// INVITEs per source in the current second.
    rate: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    trunks: Vec<(crate::config::TrunkConfig, Vec<Cidr>)>,
    /// Key of our digest nonces (random per process: a restart re-challenges).
    nonce_key: [u8; 32],
    cancel: CancellationToken,
    recording_enabled: bool,
    /// `recording.consent_mode = "dtmf"`: the prompt's Opus frames, how long to wait for the 1
    /// after it, and what to do without it.
    dtmf_consent: Option<DtmfConsent>,
}

pub(crate) struct DtmfConsent {
    pub frames: Arc<Vec<bytes::Bytes>>,
    pub prompt: Duration,
    pub timeout: Duration,
    pub no_consent: String,
}

/// Where an INVITE comes from.
pub(crate) enum Source<'a> {
    Trunk(&'a crate::config::TrunkConfig),
    Loopback,
    Unknown,
}

/// The SIP bridge (cheap to clone).
#[derive(Clone)]
pub struct Sip {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sip {
    /// Bind `[sip] listen` (UDP, and TCP on the same port) and serve until `cancel`.
    pub async fn start(
        cfg: &crate::config::Config,
        sfu: Sfu,
        calls: Calls,
        cancel: CancellationToken,
    ) -> anyhow::Result<Sip> {
        let s = cfg.sip.clone();
        let transports = TransportLayer::new(cancel.child_token());
        let udp = UdpConnection::create_connection(s.listen, None, Some(cancel.child_token()))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("binding SIP UDP {}", s.listen))?;
        let local = udp
            .get_addr()
            .get_socketaddr()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        transports.add_transport(udp.into());
        if s.tcp {
            let tcp = TcpListenerConnection::new(local, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("binding SIP TCP {local}"))?;
            transports.add_transport(tcp.into());
        }
        if let (Some(addr), Some(cert), Some(key)) = (s.tls_listen, &s.tls_cert, &s.tls_key) {
            let read = |p: &std::path::PathBuf| {
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))
            };
            let config = rsipstack::transport::tls::TlsConfig {
                cert: Some(read(cert)?),
                key: Some(read(key)?),
                ..Default::default()
            };
            let tls = rsipstack::transport::tls::TlsListenerConnection::new(addr, None, config)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("SIP TLS on {addr}"))?;
            transports.add_transport(tls.into());
            tracing::info!(%addr, "SIP over TLS listening");
        }
        let endpoint = rsipstack::EndpointBuilder::new()
            .with_user_agent(concat!("commhub/", env!("CARGO_PKG_VERSION")))
            .with_cancel_token(cancel.child_token())
            .with_transport_layer(transports)
            .with_allows(vec![
                Method::Invite,
                Method::Ack,
                Method::Bye,
                Method::Cancel,
                Method::Options,
                Method::Info,
                Method::Update,
            ])
            .build();
        let incoming = endpoint
            .incoming_transactions()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        let host = s
            .public_host
            .clone()
            .unwrap_or_else(|| local.ip().to_string());
        let codecs = s.codecs.iter().filter_map(|c| Codec::parse(c)).collect();
        let trunks = s
            .trunks
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    t.sources.iter().filter_map(|a| Cidr::parse(a)).collect(),
                )
            })
            .collect();
        let inner = Arc::new(Inner {
            ports: PortAllocator::new(s.rtp_port_min, s.rtp_port_max),
            media_ip: local.ip(),
            host,
            local,
            codecs,
            dialogs,
            sfu,
            calls,
            pstn: Arc::new(PstnStats::default()),
            stats: SipStats::default(),
            legs: Mutex::new(HashMap::new()),
            next_leg: AtomicU64::new(1),
            rate: Mutex::new(HashMap::new()),
            trunks,
            nonce_key: rand::random(),
            cancel: cancel.clone(),
            recording_enabled: cfg.recording.enabled,
            dtmf_consent: (cfg.recording.consent_mode == "dtmf").then(|| {
                let pcm = recorder::load_consent_prompt();
                let frames = recorder::encode_opus_frames(&pcm)
                    .unwrap_or_default()
                    .into_iter()
                    .map(bytes::Bytes::from)
                    .collect::<Vec<_>>();
                DtmfConsent {
                    prompt: Duration::from_millis(frames.len() as u64 * 20),
                    frames: Arc::new(frames),
                    timeout: Duration::from_secs(cfg.recording.dtmf_consent_timeout_secs),
                    no_consent: cfg.recording.dtmf_no_consent.clone(),
                }
            }),
            cfg: s,
        });
        let ep = endpoint.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = ep.serve().await {
                tracing::error!(error = %e, "SIP endpoint stopped");
            }
        });
        let sip = Sip { inner };
        tokio::spawn(sip.clone().intake(incoming));
        tracing::info!(addr = %local, tcp = cfg.sip.tcp, "SIP listening");
        Ok(sip)
    }

    /// The address SIP listens on (UDP, and TCP when enabled).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    pub fn pstn_stats(&self) -> &Arc<PstnStats> {
        &self.inner.pstn
    }

    pub fn stats(&self) -> &SipStats {
        &self.inner.stats
    }

    /// Dial `to` through the trunk for `call` (room `room`). Errors when no trunk is set.
    pub fn dial(
        &self,
        call: crate::domain::CallId,
        room: &str,
        to: &str,
        from: Option<&str>,
    ) -> Result<(), String> {
        outbound::dial(
            self.inner.clone(),
            call,
            room.to_string(),
            to.to_string(),
            from.map(str::to_string),
        )
    }

    /// Hang up every phone leg of a room (call-end). Returns how many were told.
    pub fn hangup_room(&self, room: &str) -> usize {
        let legs = lock(&self.inner.legs);
        legs.get(room)
            .map(|v| {
                v.iter()
                    .filter(|l| l.ctl.send(LegCtl::Hangup).is_ok())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Send keys to the phone legs of a room (all, or the one participant named).
    pub fn send_digits(&self, room: &str, participant: Option<&str>, digits: &str) -> usize {
        let legs = lock(&self.inner.legs);
        legs.get(room)
            .map(|v| {
                v.iter()
                    .filter(|l| participant.is_none() || l.participant.as_deref() == participant)
                    .filter(|l| l.ctl.send(LegCtl::Digits(digits.to_string())).is_ok())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Stop taking calls (the endpoint stops with the server's token).
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
    }

    async fn intake(self, mut incoming: TransactionReceiver) {
        while let Some(mut tx) = incoming.recv().await {
            let inner = self.inner.clone();
            if let Some(mut dialog) = inner.dialogs.match_dialog(&tx) {
                tokio::spawn(async move {
                    let _ = dialog.handle(&mut tx).await;
                });
                continue;
            }
            match tx.original.method {
                Method::Invite => {
                    if tx
                        .original
                        .to_header()
                        .ok()
                        .and_then(|t| t.tag().ok().flatten())
                        .is_some()
                    {
                        // A re-INVITE for a dialog we do not have.
                        tokio::spawn(async move {
                            let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
                        });
                        continue;
                    }
                    inner.stats.invites.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(inbound::handle(inner, tx));
                }
                Method::Options => {
                    tokio::spawn(async move {
                        let _ = tx
                            .reply_with(
                                StatusCode::OK,
                                vec![
                                    rsipstack::sip::Header::Other(
                                        "Allow".into(),
                                        "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE".into(),
                                    ),
                                    rsipstack::sip::Header::Other(
                                        "Accept".into(),
                                        "application/sdp, application/dtmf-relay".into(),
                                    ),
                                    rsipstack::sip::Header::Other(
                                        "Supported".into(),
                                        "timer".into(),
                                    ),
                                ],
                                None,
                            )
                            .await;
                    });
                }
                Method::Ack => {}
                _ => {
                    tokio::spawn(async move {
                        let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
                    });
                }
            }
        }
    }
}

impl Inner {
    /// Where a request came from: its top Via's `received` (the transport adds it when the
    /// packet's source differs from the Via), else the Via's host.
    fn source(&self, tx: &Transaction) -> Option<IpAddr> {
        let via = tx.original.via_header().ok()?.typed().ok()?;
        if let Some(Ok(ip)) = via.received() {
            return Some(ip);
        }
        match via.uri.host_with_port.host {
            rsipstack::sip::Host::IpAddr(ip) => Some(ip),
            _ => None,
        }
    }

    /// Who a source is: a configured trunk (first match), trusted loopback, or unknown.
    fn source_kind(&self, ip: Option<IpAddr>) -> Source<'_> {
        let Some(ip) = ip else {
            return Source::Unknown;
        };
        if let Some((t, _)) = self
            .trunks
            .iter()
            .find(|(_, nets)| nets.iter().any(|c| c.contains(ip)))
        {
            return Source::Trunk(t);
        }
        if self.cfg.trust_loopback && ip.is_loopback() {
            return Source::Loopback;
        }
        Source::Unknown
    }

    /// Count an INVITE from `ip`; false when over `invites_per_sec_per_source`.
    fn rate_ok(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        let now = Instant::now();
        let mut m = lock(&self.rate);
        if m.len() > 10_000 {
            m.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(1));
        }
        let e = m.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(1) {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= self.cfg.invites_per_sec_per_source
    }

    fn live_legs(&self) -> usize {
        lock(&self.legs).values().map(Vec::len).sum()
    }

    fn register(&self, room: &str, ctl: mpsc::UnboundedSender<LegCtl>) -> u64 {
        let id = self.next_leg.fetch_add(1, Ordering::Relaxed);
        lock(&self.legs)
            .entry(room.to_string())
            .or_default()
            .push(LegEntry {
                id,
                participant: None,
                ctl,
            });
        id
    }

    fn set_participant(&self, room: &str, id: u64, participant: &str) {
        if let Some(v) = lock(&self.legs).get_mut(room)
            && let Some(e) = v.iter_mut().find(|e| e.id == id)
        {
            e.participant = Some(participant.to_string());
        }
    }

    fn unregister(&self, room: &str, id: u64) {
        let mut legs = lock(&self.legs);
        if let Some(v) = legs.get_mut(room) {
            v.retain(|e| e.id != id);
            if v.is_empty() {
                legs.remove(room);
            }
        }
    }

    /// Our Contact URI.
    fn contact(&self) -> rsipstack::sip::Uri {
        let s = format!("sip:commhub@{}:{}", self.host, self.local.port());
        rsipstack::sip::Uri::try_from(s.as_str()).unwrap_or_default()
    }

    /// A UDP socket for a leg's RTP, from `[sip] rtp_port_min..=rtp_port_max`.
    async fn rtp_socket(&self) -> Option<(tokio::net::UdpSocket, media::ports::PortLease)> {
        for _ in 0..8 {
            let lease = self.ports.lease()?;
            if let Ok(s) =
                tokio::net::UdpSocket::bind(SocketAddr::new(self.media_ip, lease.port())).await
            {
                return Some((s, lease));
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("192.0.2.7")
                .unwrap()
                .contains("192.0.2.7".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("host").is_none());
    }
}
