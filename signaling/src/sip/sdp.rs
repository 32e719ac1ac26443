//! SDP for PSTN legs (RFC 4566 / RFC 3264), narrowed to what a SIP audio leg needs: the first
//! audio m-line, its connection address, payload types (static ones without `a=rtpmap`
//! included, RFC 3551), `a=ptime`, the direction and `a=crypto`. Everything else is carried
//! but ignored. Pure: text in, typed values or a typed error out; never panics on input.
//!
//! Why our own reader rather than a general SDP crate: the bridge only ever looks at these few
//! lines, must map static payload types that general parsers reject when `a=rtpmap` is missing,
//! and must stay total on hostile input; the full WebRTC-over-SIP offers go to `rtc`'s parser.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Offers larger than this are refused before parsing.
pub const MAX_SDP_BYTES: usize = 16 * 1024;
/// At most this many payload types are looked at on an m-line.
const MAX_FORMATS: usize = 32;

/// The audio codecs a leg can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
    G722,
    Opus,
}

impl Codec {
    pub const ALL: [Codec; 4] = [Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma];

    /// The encoding name in `a=rtpmap` (case-insensitive on input).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The RTP clock rate (G.722's is 8000 by RFC 3551 although it samples at 16 kHz).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            _ => 8_000,
        }
    }

    /// The audio sample rate the leg mixes at.
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            Codec::G722 => 16_000,
            _ => 8_000,
        }
    }

    /// The static payload type, if it has one.
    pub fn static_pt(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::G722 => Some(9),
            Codec::Opus => None,
        }
    }

    /// The config spelling (`pcmu`, `pcma`, `g722`, `opus`).
    pub fn parse(s: &str) -> Option<Codec> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pcmu" => Some(Codec::Pcmu),
            "pcma" => Some(Codec::Pcma),
            "g722" => Some(Codec::G722),
            "opus" => Some(Codec::Opus),
            _ => None,
        }
    }

    fn from_rtpmap(name: &str, clock: u32) -> Option<Codec> {
        let c = match name.to_ascii_lowercase().as_str() {
            "pcmu" => Codec::Pcmu,
            "pcma" => Codec::Pcma,
            "g722" => Codec::G722,
            "opus" => Codec::Opus,
            _ => return None,
        };
        (c.clock_rate() == clock).then_some(c)
    }
}

/// An m-line's media direction (RFC 3264 section 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer gives to an offer with this one.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// Whether the side with this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side with this direction receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// The m-line's transport profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// RTP/AVP (plain RTP) or RTP/AVPF.
    Avp,
    /// RTP/SAVP(F) with `a=crypto` (SDES-SRTP).
    Savp,
    /// ICE + DTLS-SRTP (`UDP/TLS/RTP/SAVPF`, or FreeSWITCH's `RTP/SAVPF` with a fingerprint).
    WebRtc,
}

/// One payload type on the m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub pt: u8,
    /// Encoding name as written (`PCMU`, `telephone-event`, ...); empty if unknown.
    pub name: String,
    pub clock: u32,
    pub fmtp: Option<String>,
}

/// An SDES key line (`a=crypto:<tag> <suite> inline:<key>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: String,
    pub key: String,
}

/// The parts of a remote description a leg uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Where to send RTP (None: `c=0.0.0.0`, port 0 or missing).
    pub rtp: Option<SocketAddr>,
    pub proto: Proto,
    pub formats: Vec<Format>,
    pub ptime: Option<u32>,
    pub direction: Direction,
    pub crypto: Vec<Crypto>,
    /// The m-line's port was 0: the stream is refused.
    pub rejected: bool,
}

/// Why a description cannot be used; each maps to one SIP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the description is {0} bytes; the limit is {MAX_SDP_BYTES}")]
    TooLarge(usize),
    #[error("not an SDP description: {0}")]
    Malformed(&'static str),
    #[error("no audio stream in the description")]
    NoAudio,
    #[error("no codec in common (offered: {0})")]
    NoCommonCodec(String),
    #[error("unsupported transport `{0}`")]
    UnsupportedProto(String),
}

fn parse_u32(s: &str) -> Option<u32> {
    s.trim().parse().ok()
}

/// Parse a remote offer or answer.
pub fn parse(sdp: &str) -> Result<Remote, SdpError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge(sdp.len()));
    }
    if !sdp.trim_start().starts_with("v=") {
        return Err(SdpError::Malformed("it does not start with `v=`"));
    }
    let mut session_addr: Option<IpAddr> = None;
    let mut session_dir = Direction::SendRecv;
    // Only the first audio m-line counts; later m-lines are skipped.
    let mut audio: Option<(u16, String, Vec<u8>)> = None;
    let mut media_addr: Option<IpAddr> = None;
    let mut media_dir: Option<Direction> = None;
    let mut in_audio = false;
    let mut seen_media = false;
    let mut rtpmap: Vec<(u8, String, u32)> = Vec::new();
    let mut fmtp: Vec<(u8, String)> = Vec::new();
    let mut ptime = None;
    let mut crypto = Vec::new();
    let mut fingerprint = false;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k == "m" {
            seen_media = true;
            if audio.is_some() {
                in_audio = false;
                continue;
            }
            let mut it = v.split_ascii_whitespace();
            let (Some(kind), Some(port), Some(proto)) = (it.next(), it.next(), it.next()) else {
                return Err(SdpError::Malformed("an m-line needs media, port and proto"));
            };
            if kind != "audio" {
                in_audio = false;
                continue;
            }
            let port = port
                .split('/')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or(SdpError::Malformed("the m-line's port is not a number"))?;
            let pts: Vec<u8> = it
                .take(MAX_FORMATS)
                .filter_map(|p| p.parse::<u8>().ok())
                .filter(|p| *p < 128)
                .collect();
            audio = Some((port, proto.to_string(), pts));
            in_audio = true;
            continue;
        }
        if seen_media && !in_audio {
            continue;
        }
        match k {
            "c" => {
                let addr = v
                    .split_ascii_whitespace()
                    .nth(2)
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok());
                if in_audio {
                    media_addr = addr;
                } else {
                    session_addr = addr;
                }
            }
            "a" => {
                let (name, val) = v.split_once(':').unwrap_or((v, ""));
                let dir = match name {
                    "sendrecv" => Some(Direction::SendRecv),
                    "sendonly" => Some(Direction::SendOnly),
                    "recvonly" => Some(Direction::RecvOnly),
                    "inactive" => Some(Direction::Inactive),
                    _ => None,
                };
                if let Some(d) = dir {
                    if in_audio {
                        media_dir = Some(d);
                    } else {
                        session_dir = d;
                    }
                    continue;
                }
                match name {
                    "rtpmap" => {
                        let mut it = val.splitn(2, ' ');
                        let (Some(pt), Some(enc)) = (it.next(), it.next()) else {
                            continue;
                        };
                        let Some(pt) = pt.parse::<u8>().ok().filter(|p| *p < 128) else {
                            continue;
                        };
                        let mut e = enc.trim().split('/');
                        let n = e.next().unwrap_or("").to_string();
                        let Some(clock) = e.next().and_then(parse_u32) else {
                            continue;
                        };
                        if rtpmap.len() < MAX_FORMATS {
                            rtpmap.push((pt, n, clock));
                        }
                    }
                    "fmtp" => {
                        if let Some((pt, p)) = val.split_once(' ')
                            && let Ok(pt) = pt.parse::<u8>()
                            && fmtp.len() < MAX_FORMATS
                        {
                            fmtp.push((pt, p.trim().to_string()));
                        }
                    }
                    "ptime" => ptime = parse_u32(val).filter(|p| (10..=120).contains(p)),
                    "crypto" => {
                        let mut it = val.split_ascii_whitespace();
                        if let (Some(tag), Some(suite), Some(key)) = (
                            it.next().and_then(parse_u32),
                            it.next(),
                            it.next().and_then(|k| k.strip_prefix("inline:")),
                        ) && crypto.len() < 8
                        {
                            crypto.push(Crypto {
                                tag,
                                suite: suite.to_string(),
                                key: key.split('|').next().unwrap_or("").to_string(),
                            });
                        }
                    }
                    "fingerprint" => fingerprint = true,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let Some((port, proto_s, pts)) = audio else {
        return Err(SdpError::NoAudio);
    };
    let proto = match proto_s.as_str() {
        "RTP/AVP" | "RTP/AVPF" => Proto::Avp,
        "RTP/SAVP" | "RTP/SAVPF" if fingerprint && crypto.is_empty() => Proto::WebRtc,
        "RTP/SAVP" | "RTP/SAVPF" => Proto::Savp,
        "UDP/TLS/RTP/SAVP" | "UDP/TLS/RTP/SAVPF" => Proto::WebRtc,
        other => return Err(SdpError::UnsupportedProto(other.chars().take(32).collect())),
    };
    let formats = pts
        .iter()
        .map(|&pt| {
            let (name, clock) = match rtpmap.iter().find(|(p, _, _)| *p == pt) {
                Some((_, n, c)) => (n.clone(), *c),
                None => match pt {
                    0 => ("PCMU".to_string(), 8000),
                    8 => ("PCMA".to_string(), 8000),
                    9 => ("G722".to_string(), 8000),
                    _ => (String::new(), 0),
                },
            };
            Format {
                pt,
                name,
                clock,
                fmtp: fmtp.iter().find(|(p, _)| *p == pt).map(|(_, f)| f.clone()),
            }
        })
        .collect();
    let addr = media_addr.or(session_addr);
    let mut direction = media_dir.unwrap_or(session_dir);
    // RFC 2543 hold: a zero connection address means "do not send to me".
    let zero = addr.is_some_and(|a| a.is_unspecified());
    if zero && direction == Direction::SendRecv {
        direction = Direction::SendOnly;
    }
    let rtp = addr
        .filter(|a| !a.is_unspecified() && port != 0)
        .map(|a| SocketAddr::new(a, port));
    Ok(Remote {
        rtp,
        proto,
        formats,
        ptime,
        direction,
        crypto,
        rejected: port == 0,
    })
}

/// What the two sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    /// The payload type the codec has on this leg (the offerer's number).
    pub pt: u8,
    /// telephone-event's payload type at the codec's clock rate, if offered.
    pub dtmf_pt: Option<u8>,
    /// Packet time we send at (ms).
    pub ptime: u32,
    /// Our direction.
    pub direction: Direction,
    pub remote: Option<SocketAddr>,
    /// SDES-SRTP (`RTP/SAVP`): the offer's key line we accepted (tag, suite, its key). Our own
    /// key goes in the answer (see [`answer_srtp`]).
    pub crypto: Option<Crypto>,
}

/// The SDES suites we take, in order of preference.
pub const SRTP_SUITES: [&str; 2] = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"];

/// Choose the codec (the first of `prefs` the offer has) and the rest of the answer. `ptime`
/// is the default when the offer names none; an offered one (10..=60 ms, whole 10 ms) wins.
pub fn negotiate(offer: &Remote, prefs: &[Codec], ptime: u32) -> Result<Negotiated, SdpError> {
    if offer.rejected {
        return Err(SdpError::NoAudio);
    }
    let known: Vec<(Codec, u8)> = offer
        .formats
        .iter()
        .filter_map(|f| Codec::from_rtpmap(&f.name, f.clock).map(|c| (c, f.pt)))
        .collect();
    let Some((codec, pt)) = prefs
        .iter()
        .find_map(|c| known.iter().find(|(k, _)| k == c).copied())
    else {
        let offered: Vec<String> = offer
            .formats
            .iter()
            .map(|f| {
                if f.name.is_empty() {
                    f.pt.to_string()
                } else {
                    f.name.chars().take(24).collect()
                }
            })
            .collect();
        return Err(SdpError::NoCommonCodec(offered.join(", ")));
    };
    let dtmf_pt = offer
        .formats
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("telephone-event") && f.clock == codec.clock_rate())
        .map(|f| f.pt);
    let ptime = offer
        .ptime
        .filter(|p| (10..=60).contains(p) && p % 10 == 0)
        .unwrap_or(ptime);
    let crypto = match offer.proto {
        Proto::Savp => Some(
            SRTP_SUITES
                .iter()
                .find_map(|s| offer.crypto.iter().find(|c| c.suite == *s).cloned())
                .ok_or_else(|| {
                    SdpError::UnsupportedProto(format!(
                        "RTP/SAVP without an a=crypto suite we support ({})",
                        SRTP_SUITES.join(", ")
                    ))
                })?,
        ),
        _ => None,
    };
    Ok(Negotiated {
        codec,
        pt,
        dtmf_pt,
        ptime,
        direction: offer.direction.answer(),
        remote: offer.rtp,
        crypto,
    })
}

/// Pick what an answer to our offer chose: its first format that we offered.
pub fn accept_answer(
    answer: &Remote,
    offered: &[Codec],
    ptime: u32,
) -> Result<Negotiated, SdpError> {
    let mut n = negotiate(answer, &Codec::ALL, ptime)?;
    // The answerer's order is its preference: use its first codec we know.
    if let Some((c, pt)) = answer
        .formats
        .iter()
        .find_map(|f| Codec::from_rtpmap(&f.name, f.clock).map(|c| (c, f.pt)))
        .filter(|(c, _)| offered.contains(c))
    {
        n.codec = c;
        n.pt = pt;
        n.dtmf_pt = answer
            .formats
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case("telephone-event") && f.clock == c.clock_rate())
            .map(|f| f.pt);
    } else if !offered.contains(&n.codec) {
        return Err(SdpError::NoCommonCodec(n.codec.name().into()));
    }
    // In an answer the direction is the remote's own: ours is its mirror.
    n.direction = answer.direction.answer();
    Ok(n)
}

/// The dynamic payload types we use in our offers.
pub const OPUS_PT: u8 = 111;
pub const DTMF_PT: u8 = 101;
pub const DTMF48_PT: u8 = 110;

fn rtpmap_line(out: &mut String, c: Codec, pt: u8) {
    match c {
        Codec::Opus => {
            let _ = write!(
                out,
                "a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} useinbandfec=1;minptime=10\r\n"
            );
        }
        other => {
            let _ = write!(
                out,
                "a=rtpmap:{pt} {}/{}\r\n",
                other.name(),
                other.clock_rate()
            );
        }
    }
}

fn header(out: &mut String, ip: IpAddr, session: u64, version: u64) {
    let fam = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let _ = write!(
        out,
        "v=0\r\no=commhub {session} {version} IN {fam} {ip}\r\ns=commhub\r\nc=IN {fam} {ip}\r\nt=0 0\r\n"
    );
}

/// Our answer to an offer we negotiated (plain RTP).
pub fn answer(n: &Negotiated, local: SocketAddr, session: u64, version: u64) -> String {
    answer_srtp(n, local, session, version, None)
}

/// Our answer; with `our_key` (base64 of key and salt) an SDES-SRTP one: `RTP/SAVP` and our
/// `a=crypto` line with the offer's tag and suite.
pub fn answer_srtp(
    n: &Negotiated,
    local: SocketAddr,
    session: u64,
    version: u64,
    our_key: Option<&str>,
) -> String {
    let mut out = String::with_capacity(300);
    header(&mut out, local.ip(), session, version);
    let proto = match (&n.crypto, our_key) {
        (Some(_), Some(_)) => "RTP/SAVP",
        _ => "RTP/AVP",
    };
    let _ = write!(out, "m=audio {} {proto} {}", local.port(), n.pt);
    if let Some(d) = n.dtmf_pt {
        let _ = write!(out, " {d}");
    }
    out.push_str("\r\n");
    rtpmap_line(&mut out, n.codec, n.pt);
    if let Some(d) = n.dtmf_pt {
        let _ = write!(
            out,
            "a=rtpmap:{d} telephone-event/{}\r\na=fmtp:{d} 0-16\r\n",
            n.codec.clock_rate()
        );
    }
    let _ = write!(out, "a=ptime:{}\r\na={}\r\n", n.ptime, n.direction.as_str());
    if let (Some(c), Some(k)) = (&n.crypto, our_key) {
        let _ = write!(out, "a=crypto:{} {} inline:{k}\r\n", c.tag, c.suite);
    }
    out
}

/// Our offer (outbound calls, and INVITEs without SDP): `codecs` in preference order plus
/// telephone-event at 8 kHz (and at 48 kHz when Opus is offered).
pub fn offer(
    codecs: &[Codec],
    local: SocketAddr,
    ptime: u32,
    direction: Direction,
    session: u64,
    version: u64,
) -> String {
    let mut out = String::with_capacity(400);
    header(&mut out, local.ip(), session, version);
    let pt_of = |c: Codec| c.static_pt().unwrap_or(OPUS_PT);
    let _ = write!(out, "m=audio {} RTP/AVP", local.port());
    for c in codecs {
        let _ = write!(out, " {}", pt_of(*c));
    }
    let opus = codecs.contains(&Codec::Opus);
    if opus {
        let _ = write!(out, " {DTMF48_PT}");
    }
    let _ = write!(out, " {DTMF_PT}\r\n");
    for c in codecs {
        rtpmap_line(&mut out, *c, pt_of(*c));
    }
    if opus {
        let _ = write!(
            out,
            "a=rtpmap:{DTMF48_PT} telephone-event/48000\r\na=fmtp:{DTMF48_PT} 0-16\r\n"
        );
    }
    let _ = write!(
        out,
        "a=rtpmap:{DTMF_PT} telephone-event/8000\r\na=fmtp:{DTMF_PT} 0-16\r\na=ptime:{ptime}\r\na={}\r\n",
        direction.as_str()
    );
    out
}

/// A WebRTC-over-SIP offer as a WebRTC stack accepts it, and what to undo in the answer.
///
/// FreeSWITCH (`media_webrtc=true`) and other SIP endpoints send ICE + DTLS-SRTP offers with
/// the proto `RTP/SAVPF`, no `a=mid`, no `a=group:BUNDLE`, no direction and RTCP candidates
/// (component 2) beside `a=rtcp-mux`. A WebRTC stack (`rtc`) refuses a section without a mid
/// and skips one without a direction, so the offer is completed here and the answer put back
/// in the offer's terms (RFC 5888 section 9.1: an answer carries a mid only if the offer did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRtcOffer {
    /// The offer to hand to the WebRTC stack.
    pub sdp: String,
    /// The mids we invented (removed from the answer).
    pub added_mids: Vec<String>,
    /// The offer had `a=group:BUNDLE`.
    pub bundle: bool,
    /// The offer's m-line protos, in order.
    pub protos: Vec<String>,
}

/// Complete a WebRTC-over-SIP offer (see [`WebRtcOffer`]).
pub fn webrtc_offer(offer: &str) -> WebRtcOffer {
    let mut out = String::with_capacity(offer.len() + 64);
    let mut added = Vec::new();
    let mut protos = Vec::new();
    let bundle = offer
        .lines()
        .any(|l| l.trim_end().starts_with("a=group:BUNDLE"));
    // Split into the session part and the media sections.
    let mut sections: Vec<Vec<String>> = vec![Vec::new()];
    for line in offer.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(last) = sections.last_mut() {
            last.push(line.to_string());
        }
    }
    for (i, sec) in sections.iter().enumerate() {
        if i == 0 {
            for l in sec {
                out.push_str(l);
                out.push_str("\r\n");
            }
            continue;
        }
        let has_mid = sec.iter().any(|l| l.starts_with("a=mid:"));
        let has_dir = sec.iter().any(|l| {
            matches!(
                l.as_str(),
                "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
            )
        });
        let mux = sec.iter().any(|l| l == "a=rtcp-mux");
        for (j, l) in sec.iter().enumerate() {
            if j == 0 {
                let mut f: Vec<&str> = l.split(' ').collect();
                if f.len() > 2 {
                    protos.push(f[2].to_string());
                    if f[2] == "RTP/SAVPF" || f[2] == "RTP/SAVP" {
                        f[2] = "UDP/TLS/RTP/SAVPF";
                    }
                }
                out.push_str(&f.join(" "));
                out.push_str("\r\n");
                continue;
            }
            // RTCP candidates are useless with rtcp-mux.
            if mux && l.starts_with("a=candidate:") && l.split(' ').nth(1) == Some("2") {
                continue;
            }
            out.push_str(l);
            out.push_str("\r\n");
        }
        if !has_mid {
            let mid = (i - 1).to_string();
            out.push_str(&format!("a=mid:{mid}\r\n"));
            added.push(mid);
        }
        if !has_dir {
            out.push_str("a=sendrecv\r\n");
        }
    }
    WebRtcOffer {
        sdp: out,
        added_mids: added,
        bundle,
        protos,
    }
}

/// Put a WebRTC stack's answer back in the offer's terms (see [`WebRtcOffer`]).
pub fn webrtc_answer(answer: &str, offer: &WebRtcOffer) -> String {
    let mut out = String::with_capacity(answer.len());
    let mut m = 0usize;
    for line in answer.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(mid) = line.strip_prefix("a=mid:")
            && offer.added_mids.iter().any(|a| a == mid)
        {
            continue;
        }
        if line.starts_with("a=group:BUNDLE") && !offer.bundle {
            continue;
        }
        if line.starts_with("m=") {
            let mut f: Vec<&str> = line.split(' ').collect();
            if f.len() > 2
                && let Some(p) = offer.protos.get(m)
            {
                f[2] = p.as_str();
            }
            m += 1;
            out.push_str(&f.join(" "));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SIPP_PCMA: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";

    #[test]
    fn sipp_pcma_offer_is_answered_with_pcma_at_the_default_ptime() {
        let r = parse(SIPP_PCMA).unwrap();
        assert_eq!(r.rtp, Some("127.0.0.1:6000".parse().unwrap()));
        assert_eq!(r.proto, Proto::Avp);
        let n = negotiate(&r, &Codec::ALL, 20).unwrap();
        assert_eq!(
            (n.codec, n.pt, n.dtmf_pt, n.ptime),
            (Codec::Pcma, 8, None, 20)
        );
        let a = answer(&n, "127.0.0.1:4000".parse().unwrap(), 1, 1);
        assert!(a.contains("m=audio 4000 RTP/AVP 8\r\n"), "{a}");
        assert!(a.contains("a=sendrecv"));
        // Our answer parses back to the same choice.
        let back = parse(&a).unwrap();
        assert_eq!(negotiate(&back, &[Codec::Pcma], 20).unwrap().pt, 8);
    }

    #[test]
    fn static_types_without_rtpmap_and_preference_order() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 0 8 9 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n";
        let r = parse(sdp).unwrap();
        let n = negotiate(&r, &Codec::ALL, 20).unwrap();
        assert_eq!(
            (n.codec, n.pt, n.dtmf_pt, n.ptime),
            (Codec::G722, 9, Some(101), 30)
        );
        let n = negotiate(&r, &[Codec::Pcma, Codec::Pcmu], 20).unwrap();
        assert_eq!(n.codec, Codec::Pcma);
    }

    #[test]
    fn opus_with_its_own_telephone_event_clock() {
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/AVP 102 0 103 101\r\na=rtpmap:102 opus/48000/2\r\na=rtpmap:103 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\n";
        let n = negotiate(&parse(sdp).unwrap(), &Codec::ALL, 20).unwrap();
        assert_eq!((n.codec, n.pt, n.dtmf_pt), (Codec::Opus, 102, Some(103)));
        let n = negotiate(&parse(sdp).unwrap(), &[Codec::Pcmu], 20).unwrap();
        assert_eq!((n.codec, n.pt, n.dtmf_pt), (Codec::Pcmu, 0, Some(101)));
    }

    #[test]
    fn no_common_codec_names_what_was_offered() {
        let sdp =
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/AVP 18 97\r\na=rtpmap:97 iLBC/8000\r\n";
        let e = negotiate(&parse(sdp).unwrap(), &Codec::ALL, 20).unwrap_err();
        assert_eq!(e, SdpError::NoCommonCodec("18, iLBC".into()));
    }

    #[test]
    fn hold_directions_are_mirrored() {
        for (offer, ours) in [
            ("a=sendonly", Direction::RecvOnly),
            ("a=recvonly", Direction::SendOnly),
            ("a=inactive", Direction::Inactive),
            ("a=sendrecv", Direction::SendRecv),
            ("", Direction::SendRecv),
        ] {
            let sdp = format!("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\n{offer}\r\n");
            let n = negotiate(&parse(&sdp).unwrap(), &Codec::ALL, 20).unwrap();
            assert_eq!(n.direction, ours, "{offer}");
        }
        // RFC 2543 hold: c=0.0.0.0 means the peer will not receive.
        let sdp = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 5000 RTP/AVP 0\r\n";
        let r = parse(sdp).unwrap();
        assert_eq!(r.rtp, None);
        assert_eq!(
            negotiate(&r, &Codec::ALL, 20).unwrap().direction,
            Direction::RecvOnly
        );
    }

    #[test]
    fn transports() {
        let base = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 ";
        let p = |proto: &str, extra: &str| {
            parse(&format!("{base}{proto} 0\r\n{extra}")).map(|r| r.proto)
        };
        assert_eq!(p("RTP/AVP", ""), Ok(Proto::Avp));
        assert_eq!(
            p(
                "RTP/SAVP",
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA|2^20\r\n"
            ),
            Ok(Proto::Savp)
        );
        assert_eq!(
            p("RTP/SAVPF", "a=fingerprint:sha-256 AA:BB\r\n"),
            Ok(Proto::WebRtc)
        );
        assert_eq!(p("UDP/TLS/RTP/SAVPF", ""), Ok(Proto::WebRtc));
        assert!(matches!(
            p("TCP/MSRP", ""),
            Err(SdpError::UnsupportedProto(_))
        ));
        let r = parse(&format!(
            "{base}RTP/SAVP 0\r\na=crypto:7 AES_CM_128_HMAC_SHA1_32 inline:KEY|2^20|1:4\r\n"
        ))
        .unwrap();
        assert_eq!(
            r.crypto,
            vec![Crypto {
                tag: 7,
                suite: "AES_CM_128_HMAC_SHA1_32".into(),
                key: "KEY".into()
            }]
        );
    }

    #[test]
    fn sdes_offers_are_answered_with_our_key_in_the_offers_suite() {
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:XX\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:YY|2^31\r\n";
        let n = negotiate(&parse(sdp).unwrap(), &Codec::ALL, 20).unwrap();
        assert_eq!(
            n.crypto,
            Some(Crypto {
                tag: 2,
                suite: "AES_CM_128_HMAC_SHA1_32".into(),
                key: "YY".into()
            })
        );
        let a = answer_srtp(&n, "127.0.0.1:4000".parse().unwrap(), 1, 1, Some("OURKEY"));
        assert!(a.contains("m=audio 4000 RTP/SAVP 0\r\n"), "{a}");
        assert!(
            a.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:OURKEY\r\n"),
            "{a}"
        );
        // Only suites we do not know: refused.
        let bad = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/SAVP 0\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:XX\r\n";
        assert!(matches!(
            negotiate(&parse(bad).unwrap(), &Codec::ALL, 20),
            Err(SdpError::UnsupportedProto(_))
        ));
        // RTP/AVP with a=crypto (optional SRTP): plain RTP.
        let opt = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:XX\r\n";
        assert_eq!(
            negotiate(&parse(opt).unwrap(), &Codec::ALL, 20)
                .unwrap()
                .crypto,
            None
        );
    }

    #[test]
    fn only_the_first_audio_line_counts() {
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 7000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=sendonly\r\nm=audio 5000 RTP/AVP 8\r\nm=audio 6000 RTP/AVP 0\r\na=inactive\r\n";
        let r = parse(sdp).unwrap();
        assert_eq!(r.rtp.unwrap().port(), 5000);
        assert_eq!(r.direction, Direction::SendRecv);
        assert_eq!(r.formats.len(), 1);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(parse(""), Err(SdpError::Malformed(_))));
        assert!(matches!(parse("hello"), Err(SdpError::Malformed(_))));
        assert_eq!(parse("v=0\r\n"), Err(SdpError::NoAudio));
        assert!(matches!(
            parse("v=0\r\nm=audio\r\n"),
            Err(SdpError::Malformed(_))
        ));
        assert!(matches!(
            parse("v=0\r\nm=audio x RTP/AVP 0\r\n"),
            Err(SdpError::Malformed(_))
        ));
        assert!(matches!(
            parse(&"v=0\r\n".repeat(5000)),
            Err(SdpError::TooLarge(_))
        ));
        // Port 0: the stream is refused.
        let r = parse("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n").unwrap();
        assert!(r.rejected);
        assert_eq!(negotiate(&r, &Codec::ALL, 20), Err(SdpError::NoAudio));
        // Every prefix and a sprinkling of byte flips of a real offer: no panic.
        let full = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=crypto:1 X inline:Y\r\n";
        for i in 0..full.len() {
            let _ = parse(&full[..i]);
            let mut b = full.as_bytes().to_vec();
            b[i] = b[i].wrapping_add(17);
            if let Ok(s) = std::str::from_utf8(&b) {
                let _ = parse(s).map(|r| negotiate(&r, &Codec::ALL, 20));
            }
        }
    }

    /// The shape FreeSWITCH sends with media_webrtc=true (signalwire/freeswitch issue 1310).
    const FS_WEBRTC: &str = "v=0\r\no=FreeSWITCH 1 2 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=msid-semantic: WMS x\r\nm=audio 20000 RTP/SAVPF 102 0 8 103 101\r\na=rtpmap:102 opus/48000/2\r\na=fmtp:102 useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:103 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=fingerprint:sha-256 AB:CD\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtcp:20000 IN IP4 127.0.0.1\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=candidate:1 1 udp 2130706431 127.0.0.1 20000 typ host\r\na=candidate:1 2 udp 2130706430 127.0.0.1 20001 typ host\r\n";

    #[test]
    fn freeswitch_webrtc_offers_are_completed_and_answers_restored() {
        let r = parse(FS_WEBRTC).unwrap();
        assert_eq!(r.proto, Proto::WebRtc);
        let o = webrtc_offer(FS_WEBRTC);
        assert!(
            o.sdp
                .contains("m=audio 20000 UDP/TLS/RTP/SAVPF 102 0 8 103 101\r\n"),
            "{}",
            o.sdp
        );
        assert!(o.sdp.contains("a=mid:0\r\n") && o.sdp.contains("a=sendrecv\r\n"));
        assert!(
            !o.sdp.contains(" 2 udp "),
            "component-2 candidates dropped: {}",
            o.sdp
        );
        assert_eq!(o.added_mids, vec!["0".to_string()]);
        assert!(!o.bundle);
        // An answer such as a WebRTC stack writes.
        let answer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:102 opus/48000/2\r\na=sendrecv\r\n";
        let back = webrtc_answer(answer, &o);
        assert!(back.contains("m=audio 9 RTP/SAVPF 102\r\n"), "{back}");
        assert!(
            !back.contains("a=mid") && !back.contains("BUNDLE"),
            "{back}"
        );
        // An offer that has mids and BUNDLE keeps them.
        let full = "v=0\r\na=group:BUNDLE a\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a\r\na=sendonly\r\n";
        let o = webrtc_offer(full);
        assert!(o.added_mids.is_empty() && o.bundle);
        assert!(!o.sdp.contains("a=sendrecv"));
        let back = webrtc_answer(
            "v=0\r\na=group:BUNDLE a\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a\r\n",
            &o,
        );
        assert!(back.contains("a=mid:a") && back.contains("BUNDLE"));
    }

    #[test]
    fn our_offer_and_an_answer_to_it() {
        let o = offer(
            &[Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma],
            "127.0.0.1:4000".parse().unwrap(),
            20,
            Direction::SendRecv,
            5,
            1,
        );
        assert!(
            o.contains("m=audio 4000 RTP/AVP 111 9 0 8 110 101\r\n"),
            "{o}"
        );
        let r = parse(&o).unwrap();
        assert_eq!(r.formats.len(), 6);
        // sipp's uas answers PCMU whatever was offered.
        let ans = parse(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        )
        .unwrap();
        let n = accept_answer(&ans, &Codec::ALL, 20).unwrap();
        assert_eq!(
            (n.codec, n.pt, n.remote.unwrap().port()),
            (Codec::Pcmu, 0, 6000)
        );
        // An answer with a codec we did not offer is refused.
        assert!(accept_answer(&ans, &[Codec::Opus], 20).is_err());
    }
}
