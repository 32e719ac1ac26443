//! One answered (or early) phone leg: its room membership and media (`media::pstn`), and its
//! dialog for the rest of the call: re-INVITE and UPDATE (hold, new address, session
//! refresh), INFO digits, BYE either way, the RFC 4028 deadline, the RTP timeout, and orders
//! from the API (hang up, keypad).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use media::LeaveReason;
use media::codec::WireKind;
use media::pstn::{LegCommand, LegHandle, LegParams, LegSignal};
use rsipstack::dialog::DialogId;
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode};
use signaling::sip::sdp::{self, Codec, Direction, Negotiated};
use signaling::sip::timer::{Refresher, SessionTimer};
use tokio::sync::mpsc;

use super::{Inner, LegCtl};
use crate::domain::{CallId, RoomName};

/// The leg's dialog, whichever side made it.
pub(super) struct LegDialog(pub(super) InviteDialog);

impl LegDialog {
    pub(super) fn new(d: InviteDialog) -> LegDialog {
        LegDialog(d)
    }

    pub(super) fn id(&self) -> DialogId {
        self.0.id()
    }
}

/// An INVITE we are answering, routed and admitted.
pub(super) struct Accepted {
    pub inner: Arc<Inner>,
    pub call: CallId,
    pub room: RoomName,
    pub display: String,
    pub identity: Option<String>,
    pub dialog: LegDialog,
    pub state_rx: DialogStateReceiver,
    pub session: Option<SessionTimer>,
    /// What the INVITE's offer negotiated; `None` when it had no SDP (we offer in the 200)
    /// or offered WebRTC media.
    pub negotiated: Option<Negotiated>,
    /// A WebRTC (ICE + DTLS-SRTP) offer, answered by a peer connection.
    pub webrtc_offer: Option<String>,
}

pub(super) fn wire(c: Codec) -> WireKind {
    match c {
        Codec::Pcmu => WireKind::Pcmu,
        Codec::Pcma => WireKind::Pcma,
        Codec::G722 => WireKind::G722,
        Codec::Opus => WireKind::Opus,
    }
}

/// A fresh SDES master key (16 bytes of key, 14 of salt).
pub(super) fn new_srtp_key() -> Vec<u8> {
    (0..30).map(|_| rand::random::<u8>()).collect()
}

fn b64(k: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The SRTP keys of a negotiated SDES leg (none for plain RTP).
fn srtp_keys(
    n: &Negotiated,
    local: Option<&[u8]>,
) -> Result<Option<media::pstn::SrtpKeys>, String> {
    let (Some(c), Some(local)) = (&n.crypto, local) else {
        return Ok(None);
    };
    use base64::Engine as _;
    let remote = base64::engine::general_purpose::STANDARD
        .decode(c.key.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(c.key.trim()))
        .map_err(|_| "the a=crypto key is not base64".to_string())?;
    if remote.len() != 30 {
        return Err(format!(
            "the a=crypto key has {} bytes; AES-128 needs 30",
            remote.len()
        ));
    }
    Ok(Some(media::pstn::SrtpKeys {
        tag_32: c.suite.ends_with("_32"),
        local: local.to_vec(),
        remote,
    }))
}

pub(super) fn params(inner: &Inner, n: &Negotiated, srtp_local: Option<&[u8]>) -> LegParams {
    LegParams {
        codec: wire(n.codec),
        pt: n.pt,
        dtmf_pt: n.dtmf_pt,
        ptime_ms: n.ptime,
        remote: n.remote,
        send: n.direction.sends(),
        receive: n.direction.receives(),
        rtp_timeout: Duration::from_secs(inner.cfg.rtp_timeout_secs),
        opus_complexity: inner.cfg.opus_complexity,
        // Checked when the offer was answered (`srtp_keys`).
        srtp: srtp_keys(n, srtp_local).ok().flatten(),
    }
}

/// The address our SDP names for a leg's RTP socket.
pub(super) fn sdp_addr(inner: &Inner, port: u16) -> SocketAddr {
    let ip = inner.host.parse::<IpAddr>().unwrap_or(inner.media_ip);
    SocketAddr::new(ip, port)
}

fn sdp_header() -> Header {
    Header::ContentType("application/sdp".into())
}

/// Answer: RTP socket, room membership, 200 (through `accept`), then the leg until it ends.
/// An `Err` before the 200 is the final response the caller should send instead.
pub(super) async fn answer(
    a: Accepted,
    accept: impl FnOnce(String, Vec<Header>) -> Result<(), String>,
) -> Result<(), (StatusCode, String)> {
    let inner = a.inner.clone();
    if let Some(offer) = a.webrtc_offer {
        return answer_webrtc(
            a.inner, a.call, a.room, a.display, a.identity, a.dialog, a.state_rx, a.session, offer,
            accept,
        )
        .await;
    }
    let Some((socket, lease)) = inner.rtp_socket().await else {
        return Err((StatusCode::ServiceUnavailable, "no RTP port free".into()));
    };
    let local = sdp_addr(&inner, lease.port());
    let port = inner
        .sfu
        .join_leg(a.room.as_str(), a.display.clone(), "pstn".into())
        .map_err(join_error)?;
    let participant = port.id().to_string();
    super::inbound::joined(
        &inner,
        a.room.as_str(),
        &participant,
        &a.display,
        a.identity.clone(),
    )
    .await;
    let session_id: u64 = rand::random::<u32>() as u64;
    let srtp_local = a
        .negotiated
        .as_ref()
        .and_then(|n| n.crypto.as_ref())
        .map(|_| new_srtp_key());
    if let Some(n) = &a.negotiated
        && let Err(e) = srtp_keys(n, srtp_local.as_deref())
    {
        port.leave(LeaveReason::Left).await;
        return Err((StatusCode::NotAcceptableHere, e));
    }
    let body = match &a.negotiated {
        Some(n) => sdp::answer_srtp(
            n,
            local,
            session_id,
            1,
            srtp_local.as_deref().map(b64).as_deref(),
        ),
        None => sdp::offer(
            &inner.codecs,
            local,
            inner.cfg.ptime_ms,
            Direction::SendRecv,
            session_id,
            1,
        ),
    };
    if let Err(e) = accept(body, answer_headers(&a.session)) {
        port.leave(LeaveReason::Left).await;
        return Err((StatusCode::ServerInternalError, e));
    }
    inner.stats.answered.fetch_add(1, Ordering::Relaxed);
    let mut state_rx = a.state_rx;
    let negotiated = match a.negotiated {
        Some(n) => n,
        // No offer in the INVITE: the answer comes in the ACK.
        None => match wait_ack_answer(&inner, &a.dialog, &mut state_rx).await {
            Some(n) => n,
            None => {
                let _ = a.dialog.0.bye().await;
                port.leave(LeaveReason::Left).await;
                return Ok(());
            }
        },
    };
    let p = params(&inner, &negotiated, srtp_local.as_deref());
    let media =
        match media::pstn::start(port, media::pstn::LegIo::Udp(socket), p, inner.pstn.clone()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "SIP: leg media did not start");
                let _ = a.dialog.0.bye().await;
                return Ok(());
            }
        };
    run(Running {
        inner,
        call: a.call,
        room: a.room,
        dialog: a.dialog,
        state_rx,
        media,
        negotiated,
        local,
        session_id,
        version: 1,
        session: a.session,
        webrtc_answer: None,
        srtp_local,
        _lease: Some(lease),
    })
    .await;
    Ok(())
}

fn join_error(e: media::SfuError) -> (StatusCode, String) {
    match e {
        media::SfuError::Room(_) => (StatusCode::BusyHere, "the call is full".to_string()),
        other => (StatusCode::TemporarilyUnavailable, other.to_string()),
    }
}

fn answer_headers(session: &Option<SessionTimer>) -> Vec<Header> {
    let mut headers = vec![
        sdp_header(),
        Header::Other("Supported".into(), "timer".into()),
    ];
    if let Some(t) = session {
        headers.push(Header::Other("Session-Expires".into(), t.header()));
        if t.refresher == Refresher::Uac {
            headers.push(Header::Other("Require".into(), "timer".into()));
        }
    }
    headers
}

/// A leg with WebRTC media: a peer connection answers the (completed) offer; the answer goes
/// back in the offer's terms; the engine runs Opus over the peer connection.
#[allow(clippy::too_many_arguments)]
async fn answer_webrtc(
    inner: Arc<Inner>,
    call: CallId,
    room: RoomName,
    display: String,
    identity: Option<String>,
    dialog: LegDialog,
    state_rx: DialogStateReceiver,
    session: Option<SessionTimer>,
    offer: String,
    accept: impl FnOnce(String, Vec<Header>) -> Result<(), String>,
) -> Result<(), (StatusCode, String)> {
    let completed = sdp::webrtc_offer(&offer);
    let (answer, rtc) = inner
        .sfu
        .webrtc_leg(completed.sdp.clone())
        .await
        .map_err(|e| (StatusCode::NotAcceptableHere, e.to_string()))?;
    let answer = sdp::webrtc_answer(&answer, &completed);
    let port = inner
        .sfu
        .join_leg(room.as_str(), display.clone(), "pstn".into())
        .map_err(join_error)?;
    let participant = port.id().to_string();
    super::inbound::joined(&inner, room.as_str(), &participant, &display, identity).await;
    if let Err(e) = accept(answer.clone(), answer_headers(&session)) {
        port.leave(LeaveReason::Left).await;
        return Err((StatusCode::ServerInternalError, e));
    }
    inner.stats.answered.fetch_add(1, Ordering::Relaxed);
    let negotiated = Negotiated {
        codec: Codec::Opus,
        pt: rtc.pt,
        dtmf_pt: None,
        ptime: 20,
        direction: Direction::SendRecv,
        remote: None,
        crypto: None,
    };
    let media = match media::pstn::start(
        port,
        media::pstn::LegIo::WebRtc(rtc),
        params(&inner, &negotiated, None),
        inner.pstn.clone(),
    ) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "SIP: WebRTC leg media did not start");
            let _ = dialog.0.bye().await;
            return Ok(());
        }
    };
    run(Running {
        inner: inner.clone(),
        call,
        room,
        dialog,
        state_rx,
        media,
        negotiated,
        local: sdp_addr(&inner, 9),
        session_id: 0,
        version: 1,
        session,
        webrtc_answer: Some(answer),
        srtp_local: None,
        _lease: None,
    })
    .await;
    Ok(())
}

async fn wait_ack_answer(
    inner: &Inner,
    dialog: &LegDialog,
    state_rx: &mut DialogStateReceiver,
) -> Option<Negotiated> {
    let wait = async {
        while let Some(st) = state_rx.recv().await {
            match st {
                DialogState::Confirmed(..) => {
                    let ack = dialog.0.last_remote_ack()?;
                    let text = std::str::from_utf8(&ack.body).ok()?;
                    let remote = sdp::parse(text).ok()?;
                    return sdp::accept_answer(&remote, &inner.codecs, inner.cfg.ptime_ms).ok();
                }
                DialogState::Terminated(..) => return None,
                _ => {}
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(32), wait)
        .await
        .ok()
        .flatten()
}

/// A leg with media, until it ends.
pub(super) struct Running {
    pub inner: Arc<Inner>,
    pub call: CallId,
    pub room: RoomName,
    pub dialog: LegDialog,
    pub state_rx: DialogStateReceiver,
    pub media: LegHandle,
    pub negotiated: Negotiated,
    pub local: SocketAddr,
    pub session_id: u64,
    pub version: u64,
    pub session: Option<SessionTimer>,
    /// A WebRTC leg's answer: a re-INVITE gets it again (its media cannot be renegotiated).
    pub webrtc_answer: Option<String>,
    /// An SDES leg's own master key (kept across re-INVITEs).
    pub srtp_local: Option<Vec<u8>>,
    pub _lease: Option<media::ports::PortLease>,
}

/// Digits in an INFO body: `application/dtmf-relay` (`Signal=5`) or `application/dtmf` (`5`).
pub(super) fn info_digits(body: &[u8]) -> Vec<char> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let v = match line.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("signal") => v.trim(),
            Some(_) => continue,
            None => line,
        };
        let mut cs = v.chars();
        if let (Some(c), None) = (cs.next(), cs.next())
            && matches!(c, '0'..='9' | '*' | '#' | 'A'..='D' | 'a'..='d')
        {
            out.push(c.to_ascii_uppercase());
        }
    }
    out.truncate(16);
    out
}

/// A consent event about the press-1 prompt (kind `ivr_announcement`, the outcome in `note`),
/// against the call's running recording if there is one.
async fn log_consent_note(inner: &Inner, r: &Running, participant: &str, note: &str) {
    let now = chrono::Utc::now();
    let since = match tokio::time::timeout(
        Duration::from_secs(1),
        inner.calls.store().store.call(&r.call.0),
    )
    .await
    {
        Ok(Ok(Some(c))) => c.answered_at.unwrap_or(c.created_at),
        _ => now,
    };
    let row = crate::store::ConsentRow {
        id: uuid::Uuid::new_v4(),
        call_id: r.call.0,
        participant_id: participant.parse().ok(),
        recording_id: inner.calls.recording_of(r.room.as_str()).await.map(|x| x.0),
        kind: crate::domain::ConsentKind::IvrAnnouncement.as_str().into(),
        offset_ms: (now - since).num_milliseconds().max(0),
        occurred_at: now,
        source: "system".into(),
        note: Some(note.to_string()),
    };
    inner
        .calls
        .store()
        .write(crate::store::StoreOp::Consent(row))
        .await;
}

async fn on_digit(inner: &Inner, room: &RoomName, participant: &str, d: char) {
    inner.stats.dtmf.fetch_add(1, Ordering::Relaxed);
    let msg =
        serde_json::json!({"type": "dtmf", "participant_id": participant, "digit": d.to_string()});
    inner.sfu.broadcast(
        room.as_str(),
        media::ParticipantEvent::Message(Arc::from(msg.to_string())),
    );
    inner.calls.dtmf(room.as_str(), participant, d).await;
}

pub(super) async fn run(mut r: Running) {
    let inner = r.inner.clone();
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
    let entry = inner.register(r.room.as_str(), ctl_tx);
    let participant = r.media.participant.to_string();
    inner.set_participant(r.room.as_str(), entry, &participant);
    tracing::info!(call = %r.call, room = %r.room, participant = %participant,
        codec = r.negotiated.codec.name(), ptime = r.negotiated.ptime, "SIP: leg up");
    let expiry = |s: &Option<SessionTimer>| {
        s.map(|t| tokio::time::Instant::now() + Duration::from_secs(t.expiry_secs() as u64))
    };
    let mut deadline = expiry(&r.session);
    // When we are the refresher, refresh at half the interval (an UPDATE without SDP).
    let refresh_every = r
        .session
        .filter(|t| t.refresher == Refresher::Uas)
        .map(|t| Duration::from_secs((t.interval_secs / 2).max(1) as u64));
    let mut next_refresh = refresh_every.map(|d| tokio::time::Instant::now() + d);
    let mut remote_ended = false;
    // recording.consent_mode = "dtmf": the prompt, then a deadline for the 1 key.
    let mut consent_deadline = None;
    if let Some(c) = &inner.dtmf_consent {
        let _ = r.media.commands.send(LegCommand::Play(c.frames.clone()));
        log_consent_note(&inner, &r, &participant, "press-1 consent prompt played").await;
        consent_deadline = Some(tokio::time::Instant::now() + c.prompt + c.timeout);
    }
    loop {
        let sleep_consent = async {
            match consent_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let sleep_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let sleep_refresh = async {
            match next_refresh {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            st = r.state_rx.recv() => match st {
                Some(DialogState::Updated(_, req, handle)) => {
                    deadline = expiry(&r.session);
                    if req.body.is_empty() {
                        let _ = handle.respond(StatusCode::OK, None, None).await;
                        continue;
                    }
                    if let Some(a) = &r.webrtc_answer {
                        let _ = handle
                            .respond(StatusCode::OK, Some(vec![sdp_header()]), Some(a.clone().into_bytes()))
                            .await;
                        continue;
                    }
                    let mut prefs = vec![r.negotiated.codec];
                    prefs.extend(inner.codecs.iter().filter(|c| **c != r.negotiated.codec));
                    let neg = std::str::from_utf8(&req.body)
                        .map_err(|_| sdp::SdpError::Malformed("not UTF-8"))
                        .and_then(sdp::parse)
                        .and_then(|o| sdp::negotiate(&o, &prefs, r.negotiated.ptime));
                    match neg {
                        Ok(n) => {
                            r.version += 1;
                            if n.crypto.is_some() && r.srtp_local.is_none() {
                                r.srtp_local = Some(new_srtp_key());
                            }
                            let key = n.crypto.as_ref().and(r.srtp_local.as_deref()).map(b64);
                            let body = sdp::answer_srtp(&n, r.local, r.session_id, r.version, key.as_deref());
                            let _ = handle
                                .respond(StatusCode::OK, Some(vec![sdp_header()]), Some(body.into_bytes()))
                                .await;
                            tracing::info!(participant = %participant, direction = n.direction.as_str(), "SIP: session updated");
                            let _ = r.media.commands.send(LegCommand::Update(params(&inner, &n, r.srtp_local.as_deref())));
                            r.negotiated = n;
                        }
                        Err(e) => {
                            let _ = handle
                                .respond(
                                    StatusCode::NotAcceptableHere,
                                    Some(vec![Header::Other(
                                        "Warning".into(),
                                        format!("304 commhub \"{}\"", e.to_string().replace('"', "'")),
                                    )]),
                                    None,
                                )
                                .await;
                        }
                    }
                }
                Some(DialogState::Info(_, req, handle)) => {
                    let digits = info_digits(&req.body);
                    let _ = handle.respond(StatusCode::OK, None, None).await;
                    for d in digits {
                        if d == '1' {
                            consent_deadline = None;
                        }
                        on_digit(&inner, &r.room, &participant, d).await;
                    }
                }
                Some(DialogState::Options(_, _, handle)) => {
                    let _ = handle.respond(StatusCode::OK, None, None).await;
                }
                Some(DialogState::Terminated(_, reason)) => {
                    tracing::info!(participant = %participant, ?reason, "SIP: leg ended by the dialog");
                    remote_ended = true;
                    let _ = r.media.commands.send(LegCommand::Stop(LeaveReason::Left));
                }
                Some(_) => {}
                None => {
                    remote_ended = true;
                    let _ = r.media.commands.send(LegCommand::Stop(LeaveReason::Disconnected));
                }
            },
            sig = r.media.signals.recv() => match sig {
                Some(LegSignal::Dtmf(d)) => {
                    if d == '1' {
                        consent_deadline = None;
                    }
                    on_digit(&inner, &r.room, &participant, d).await;
                }
                Some(LegSignal::RtpTimeout) => {
                    tracing::info!(participant = %participant, "SIP: no RTP within rtp_timeout_secs; hanging up");
                }
                Some(LegSignal::Ended(_)) | None => {
                    let reason = match sig { Some(LegSignal::Ended(r)) => r, _ => LeaveReason::Disconnected };
                    if !remote_ended {
                        let why = match reason {
                            LeaveReason::MediaTimeout => "RTP timeout",
                            LeaveReason::CallEnded => "call ended",
                            LeaveReason::ServerShutdown => "server shutdown",
                            _ => "hangup",
                        };
                        let _ = r.dialog.0.bye_with_reason(format!("SIP;cause=200;text=\"{why}\"")).await;
                    }
                    break;
                }
            },
            c = ctl_rx.recv() => match c {
                Some(LegCtl::Hangup) | None => {
                    let _ = r.media.commands.send(LegCommand::Stop(LeaveReason::CallEnded));
                }
                Some(LegCtl::Digits(s)) => {
                    if r.negotiated.dtmf_pt.is_some() {
                        for d in s.chars() {
                            let _ = r.media.commands.send(LegCommand::SendDigit(d));
                        }
                    } else {
                        // No telephone-event on this leg: SIP INFO (application/dtmf-relay).
                        for d in s.chars() {
                            let body = format!("Signal={d}\r\nDuration=160\r\n");
                            let headers = vec![Header::ContentType("application/dtmf-relay".into())];
                            if r.dialog.0.info(Some(headers), Some(body.into_bytes())).await.is_ok() {
                                inner.pstn.dtmf_out.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            },
            _ = sleep_deadline => {
                inner.stats.session_expired.fetch_add(1, Ordering::Relaxed);
                tracing::info!(participant = %participant, "SIP: session expired without a refresh");
                deadline = None;
                let _ = r.media.commands.send(LegCommand::Stop(LeaveReason::MediaTimeout));
            },
            _ = sleep_consent => {
                consent_deadline = None;
                let action = inner
                    .dtmf_consent
                    .as_ref()
                    .map(|c| c.no_consent.clone())
                    .unwrap_or_default();
                let secs = inner.dtmf_consent.as_ref().map(|c| c.timeout.as_secs()).unwrap_or(0);
                tracing::info!(participant = %participant, action = %action, "SIP: no consent key pressed");
                log_consent_note(
                    &inner,
                    &r,
                    &participant,
                    &format!("press-1 consent prompt: no key within {secs} s after it; {action}"),
                )
                .await;
                match action.as_str() {
                    "stop_recording" => {
                        inner.calls.set_recording(r.room.as_str(), false).await;
                    }
                    "hangup" => {
                        let _ = r.media.commands.send(LegCommand::Stop(LeaveReason::Left));
                    }
                    _ => {}
                }
            },
            _ = sleep_refresh => {
                next_refresh = refresh_every.map(|d| tokio::time::Instant::now() + d);
                let headers = r.session.map(|t| vec![Header::Other("Session-Expires".into(), t.header())]);
                if r.dialog.0.update(headers, None).await.is_ok() {
                    deadline = expiry(&r.session);
                }
            },
        }
    }
    inner.unregister(r.room.as_str(), entry);
    let _ = r.dialog.id();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_bodies() {
        assert_eq!(info_digits(b"Signal=1\r\nDuration=160\r\n"), vec!['1']);
        assert_eq!(info_digits(b"signal= #\r\n"), vec!['#']);
        assert_eq!(info_digits(b"5"), vec!['5']);
        assert_eq!(info_digits(b"Signal=12\r\n"), Vec::<char>::new());
        assert_eq!(info_digits(b"\xff\xfe"), Vec::<char>::new());
    }
}
