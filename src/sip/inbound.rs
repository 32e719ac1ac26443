//! An INVITE from the PBX or a trunk: checks that need no lookup first (source, rate,
//! capacity, session timer, SDP), answered on the transaction; then the dialog, routing by
//! Request-URI user, admission through the same path as `/ws` and WHIP, 180, the leg's
//! room membership, and 200 with our answer (or our offer, for an INVITE without SDP).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rsipstack::dialog::dialog::{Dialog, DialogState};
use rsipstack::sip::{Header, HeadersExt, StatusCode, ToTypedHeader};
use rsipstack::transaction::transaction::Transaction;
use signaling::sip::digest;
use signaling::sip::route::{self, Target};
use signaling::sip::sdp::{self, Proto, SdpError};
use signaling::sip::timer;

use super::Inner;
use super::leg::{self, Accepted, LegDialog};
use crate::calls::{Joining, NewCall};
use crate::domain::{CallId, CallKind, CallStatus, Direction, EndReason, RoomName};

fn header(req: &rsipstack::sip::Request, name: &str) -> Option<String> {
    req.headers.iter().find_map(|h| {
        let n = h.name();
        n.eq_ignore_ascii_case(name)
            .then(|| h.value().trim().to_string())
    })
}

/// The request's `Supported` (or compact `k`) lists `token`.
pub(super) fn supports(req: &rsipstack::sip::Request, token: &str) -> bool {
    req.headers.iter().any(|h| {
        (h.name().eq_ignore_ascii_case("supported") || h.name().eq_ignore_ascii_case("k"))
            && h.value()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// The session timer an INVITE asks for (`Session-Expires` or its compact form `x`).
pub(super) fn session_expires(
    req: &rsipstack::sip::Request,
) -> Option<(u32, Option<timer::Refresher>)> {
    header(req, "Session-Expires")
        .or_else(|| header(req, "x"))
        .and_then(|v| timer::parse_session_expires(&v))
}

fn caller_number(req: &rsipstack::sip::Request) -> Option<String> {
    let from = req.from_header().ok()?.typed().ok()?;
    route::normalise_number(from.uri.user()?)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Nonces are good for five minutes.
const NONCE_MAX_AGE_SECS: u64 = 300;

enum Auth {
    Ok,
    Challenge { stale: bool },
    Refused,
}

/// Check an INVITE's `Proxy-Authorization` against the trunk's credentials.
fn authorized(
    inner: &Inner,
    req: &rsipstack::sip::Request,
    t: &crate::config::TrunkConfig,
    source: &str,
) -> Auth {
    let Some(creds) = header(req, "Proxy-Authorization").and_then(|v| digest::parse(&v)) else {
        return Auth::Challenge { stale: false };
    };
    match digest::check_nonce(
        &inner.nonce_key,
        &creds.nonce,
        unix_now(),
        source,
        NONCE_MAX_AGE_SECS,
    ) {
        digest::NonceCheck::Fresh => {}
        digest::NonceCheck::Stale => return Auth::Challenge { stale: true },
        digest::NonceCheck::Invalid => return Auth::Challenge { stale: false },
    }
    if creds.username == t.username
        && creds.realm == inner.cfg.realm
        && digest::verify(&creds, &t.password, "INVITE")
    {
        Auth::Ok
    } else {
        Auth::Refused
    }
}

/// What an INVITE's offer asks for.
enum Offer {
    /// Plain RTP, negotiated.
    Plain(sdp::Negotiated),
    /// ICE + DTLS-SRTP: the offer's text, for a WebRTC peer.
    WebRtc(String),
}

pub(super) async fn handle(inner: Arc<Inner>, mut tx: Transaction) {
    let st = &inner.stats;
    let src = inner.source(&tx);
    let trunk = match inner.source_kind(src) {
        super::Source::Trunk(t) => Some(t),
        super::Source::Loopback => None,
        super::Source::Unknown => {
            if inner.cfg.unknown_source == "drop" {
                st.dropped_source.fetch_add(1, Ordering::Relaxed);
                return;
            }
            st.refused_source.fetch_add(1, Ordering::Relaxed);
            let _ = tx.reply(StatusCode::Forbidden).await;
            return;
        }
    };
    if let Some(t) = trunk.filter(|t| !t.username.is_empty()) {
        let source = src.map(|ip| ip.to_string()).unwrap_or_default();
        match authorized(&inner, &tx.original, t, &source) {
            Auth::Ok => {}
            Auth::Challenge { stale } => {
                st.challenged.fetch_add(1, Ordering::Relaxed);
                let now = unix_now();
                let n = digest::nonce(&inner.nonce_key, now, &source);
                let _ = tx
                    .reply_with(
                        StatusCode::ProxyAuthenticationRequired,
                        vec![Header::Other(
                            "Proxy-Authenticate".into(),
                            digest::challenge(&inner.cfg.realm, &n, stale),
                        )],
                        None,
                    )
                    .await;
                return;
            }
            Auth::Refused => {
                st.refused_auth.fetch_add(1, Ordering::Relaxed);
                tracing::info!(trunk = %t.name, "SIP: INVITE with wrong digest credentials (403)");
                let _ = tx.reply(StatusCode::Forbidden).await;
                return;
            }
        }
    }
    if !inner.rate_ok(src) {
        st.refused_rate.fetch_add(1, Ordering::Relaxed);
        let _ = tx
            .reply_with(
                StatusCode::ServiceUnavailable,
                vec![Header::Other("Retry-After".into(), "1".into())],
                None,
            )
            .await;
        return;
    }
    if inner.live_legs() >= inner.cfg.max_legs {
        st.refused_capacity.fetch_add(1, Ordering::Relaxed);
        let _ = tx
            .reply_with(
                StatusCode::ServiceUnavailable,
                vec![Header::Other("Retry-After".into(), "5".into())],
                None,
            )
            .await;
        return;
    }
    let req = tx.original.clone();
    let session = match timer::negotiate(
        session_expires(&req),
        supports(&req, "timer"),
        inner.cfg.session_expires_secs,
        inner.cfg.min_se_secs,
    ) {
        Ok(t) => t,
        Err(timer::TimerError::TooSmall { min_se }) => {
            let _ = tx
                .reply_with(
                    StatusCode::SessionIntervalTooSmall,
                    vec![Header::Other("Min-SE".into(), min_se.to_string())],
                    None,
                )
                .await;
            return;
        }
    };
    // The offer, if any: refused now, before a dialog exists, with the reason in Warning.
    let offer = if req.body.is_empty() {
        None
    } else {
        let parsed = std::str::from_utf8(&req.body)
            .map_err(|_| SdpError::Malformed("not UTF-8"))
            .and_then(sdp::parse)
            .and_then(|r| match r.proto {
                Proto::Avp => {
                    sdp::negotiate(&r, &inner.codecs, inner.cfg.ptime_ms).map(Offer::Plain)
                }
                // ICE + DTLS-SRTP (FreeSWITCH's media_webrtc): answered by a WebRTC peer; Opus only.
                Proto::WebRtc => sdp::negotiate(&r, &[sdp::Codec::Opus], inner.cfg.ptime_ms)
                    .map(|_| Offer::WebRtc(String::from_utf8_lossy(&req.body).into_owned())),
                // SDES-SRTP: the offer's key line is checked by negotiate.
                Proto::Savp => {
                    sdp::negotiate(&r, &inner.codecs, inner.cfg.ptime_ms).map(Offer::Plain)
                }
            });
        match parsed {
            Ok(n) => Some(n),
            Err(e) => {
                st.not_acceptable.fetch_add(1, Ordering::Relaxed);
                tracing::info!(error = %e, "SIP: INVITE refused with 488");
                let _ = tx
                    .reply_with(
                        StatusCode::NotAcceptableHere,
                        vec![Header::Other(
                            "Warning".into(),
                            format!("304 commhub \"{}\"", e.to_string().replace('"', "'")),
                        )],
                        None,
                    )
                    .await;
                return;
            }
        }
    };
    let user = req.uri.user().unwrap_or("").to_string();
    let caller = caller_number(&req);
    let (state_tx, state_rx) = inner.dialogs.new_dialog_state_channel();
    let server =
        match inner
            .dialogs
            .get_or_create_server_invite(&tx, state_tx, None, Some(inner.contact()))
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "SIP: could not make a dialog for an INVITE");
                let _ = tx.reply(StatusCode::ServerInternalError).await;
                return;
            }
        };
    let Some(Dialog::Invite(dialog)) = inner.dialogs.get_dialog(&server.id()) else {
        let _ = tx.reply(StatusCode::ServerInternalError).await;
        return;
    };
    // The transaction (100 Trying, CANCEL, ACK, retransmissions) runs beside us.
    let mut d = server.clone();
    tokio::spawn(async move {
        let _ = d.handle(&mut tx).await;
    });
    let reject = |code: StatusCode, why: &str| {
        let _ = server.reject(Some(code), Some(why.to_string()));
    };

    // Routing by the Request-URI's user. A new inbound call rings until someone joins it.
    let mut new_call = false;
    let (call, room) = match route::classify(&user) {
        Target::Call(id) => {
            let Ok(call) = id.parse::<CallId>() else {
                st.not_found.fetch_add(1, Ordering::Relaxed);
                return reject(StatusCode::NotFound, "no such call");
            };
            match inner.calls.live_call(call).await {
                Some((_, true)) => return reject(StatusCode::Gone, "the call has ended"),
                Some((room, false)) => (call, room),
                None => match inner.calls.store().store.call(&call.0).await {
                    Ok(Some(c)) if c.status != CallStatus::Ended.as_str() => {
                        (call, RoomName(c.room))
                    }
                    Ok(Some(_)) => return reject(StatusCode::Gone, "the call has ended"),
                    _ => {
                        st.not_found.fetch_add(1, Ordering::Relaxed);
                        return reject(StatusCode::NotFound, "no such call");
                    }
                },
            }
        }
        Target::Number(n) => {
            match inner.calls.call_of_number(&n).await {
                Some(x) => x,
                None if inner.cfg.inbound_numbers.iter().any(|m| {
                    m == "*" || route::normalise_number(m).as_deref() == Some(n.as_str())
                }) =>
                {
                    let (c, durable) = inner
                        .calls
                        .create(NewCall {
                            kind: CallKind::Pstn.as_str().into(),
                            direction: Direction::Inbound.as_str().into(),
                            from_number: caller.clone(),
                            to_number: Some(n.clone()),
                            record: inner.recording_enabled,
                        })
                        .await;
                    if durable == crate::store::writer::Durable::Rejected {
                        return reject(
                            StatusCode::ServerInternalError,
                            "the call could not be stored",
                        );
                    }
                    tracing::info!(call = %c.id, number = %route::redact_number(&n), "SIP: new inbound call");
                    new_call = true;
                    (CallId(c.id), RoomName(c.room))
                }
                None => {
                    st.not_found.fetch_add(1, Ordering::Relaxed);
                    return reject(StatusCode::NotFound, "no open call for this number");
                }
            }
        }
        Target::Unknown => {
            st.not_found.fetch_add(1, Ordering::Relaxed);
            return reject(StatusCode::NotFound, "unknown call or number");
        }
    };
    if inner
        .calls
        .admit(room.as_str(), Some(call), None)
        .await
        .is_err()
    {
        return reject(StatusCode::Gone, "the call has ended");
    }
    let _ = server.ringing(None, None);
    let mut state_rx = state_rx;
    if new_call {
        match ring_until_joined(&inner, &room, &mut state_rx).await {
            Ring::Joined => {}
            Ring::Cancelled => {
                st.cancelled.fetch_add(1, Ordering::Relaxed);
                let _ = inner
                    .calls
                    .end(call, room.as_str(), EndReason::Abandoned.as_str())
                    .await;
                return;
            }
            Ring::TimedOut => {
                reject(StatusCode::TemporarilyUnavailable, "nobody answered");
                let _ = inner
                    .calls
                    .end(call, room.as_str(), EndReason::NoAnswer.as_str())
                    .await;
                return;
            }
            Ring::Ended => {
                // call-end while it rang: the call has its own end already.
                reject(StatusCode::TemporarilyUnavailable, "the call was ended");
                return;
            }
        }
    }
    let display = caller
        .as_deref()
        .map(route::redact_number)
        .map(|n| format!("Phone {n}"))
        .unwrap_or_else(|| "Phone".into());
    let accepted = Accepted {
        inner: inner.clone(),
        call,
        room: room.clone(),
        display,
        identity: caller,
        dialog: LegDialog::new(dialog),
        state_rx,
        session,
        negotiated: match &offer {
            Some(Offer::Plain(n)) => Some(n.clone()),
            _ => None,
        },
        webrtc_offer: match offer {
            Some(Offer::WebRtc(o)) => Some(o),
            _ => None,
        },
    };
    match leg::answer(accepted, |answer, headers| {
        server
            .accept(Some(headers), Some(answer.into_bytes()))
            .map_err(|e| e.to_string())
    })
    .await
    {
        Ok(()) => {}
        Err((code, why)) => reject(code, &why),
    }
}

enum Ring {
    Joined,
    Cancelled,
    TimedOut,
    /// call-end (or shutdown) while it rang.
    Ended,
}

/// A new inbound call rings (180) until someone is in its room (an agent pressed Join), the
/// caller gives up (CANCEL) or `ring_timeout_secs` pass.
async fn ring_until_joined(
    inner: &Inner,
    room: &RoomName,
    state_rx: &mut rsipstack::dialog::dialog::DialogStateReceiver,
) -> Ring {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(inner.cfg.ring_timeout_secs);
    // Reachable by call-end (`Sip::hangup_room`) while it rings.
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::unbounded_channel();
    let entry = inner.register(room.as_str(), ctl_tx);
    let ring = loop {
        tokio::select! {
            st = state_rx.recv() => match st {
                Some(DialogState::Terminated(..)) | None => break Ring::Cancelled,
                Some(_) => {}
            },
            c = ctl_rx.recv() => {
                if matches!(c, Some(super::LegCtl::Hangup) | None) {
                    break Ring::Ended;
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if inner.sfu.participants(room.as_str()).is_some_and(|p| !p.is_empty()) {
                    break Ring::Joined;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break Ring::TimedOut,
        }
    };
    inner.unregister(room.as_str(), entry);
    ring
}

/// Joining bookkeeping shared with outbound legs.
pub(super) async fn joined(
    inner: &Inner,
    room: &str,
    participant: &str,
    display: &str,
    identity: Option<String>,
) {
    inner
        .calls
        .joined(
            room,
            Joining::new(
                participant,
                media::ParticipantKind::Pstn,
                "pstn",
                display,
                identity,
            ),
        )
        .await;
}
