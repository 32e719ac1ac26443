//! Outbound phone calls: call-create with `kind=pstn, direction=outbound` dials `to` through
//! `[sip] trunk_uri` (`SIP_TRUNK_URI`) with the trunk's digest credentials. Ringing, early
//! media (183 with SDP: the leg joins the room before the answer), answer, busy, no answer and
//! failure reach the room as `pstn_status` messages; a call that never connects ends with
//! `busy`, `no_answer` or `failed`. call-end sends CANCEL before the answer and BYE after.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use media::LeaveReason;
use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::DialogState;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::sip::{StatusCodeKind, Uri};
use signaling::sip::route;
use signaling::sip::sdp::{self, Direction, Negotiated};
use tokio::sync::mpsc;

use super::leg::{LegDialog, Running, params, sdp_addr};
use super::{Inner, LegCtl};
use crate::domain::{CallId, EndReason, RoomName};

pub(super) fn dial(
    inner: Arc<Inner>,
    call: CallId,
    room: String,
    to: String,
    from: Option<String>,
) -> Result<(), String> {
    if inner.cfg.trunk_uri.is_empty() {
        return Err("no SIP trunk: set sip.trunk_uri (SIP_TRUNK_URI)".into());
    }
    let number = route::normalise_number(&to).ok_or("`to` is not a phone number")?;
    let trunk = Uri::try_from(inner.cfg.trunk_uri.as_str())
        .map_err(|e| format!("sip.trunk_uri does not parse: {e}"))?;
    tokio::spawn(run_dial(inner, call, RoomName(room), number, from, trunk));
    Ok(())
}

fn status(inner: &Inner, room: &RoomName, status: &str, code: Option<u16>) {
    let msg = signaling::ServerMessage::PstnStatus {
        status: status.to_string(),
        code,
    };
    inner.sfu.broadcast(
        room.as_str(),
        media::ParticipantEvent::Message(Arc::from(msg.to_json())),
    );
}

/// The end reason for a final failure response.
fn failure_reason(code: u16, timed_out: bool) -> EndReason {
    match code {
        _ if timed_out => EndReason::NoAnswer,
        486 | 600 | 603 => EndReason::Busy,
        408 | 480 | 487 => EndReason::NoAnswer,
        _ => EndReason::Failed,
    }
}

async fn run_dial(
    inner: Arc<Inner>,
    call: CallId,
    room: RoomName,
    number: String,
    from: Option<String>,
    trunk: Uri,
) {
    inner.stats.outbound.fetch_add(1, Ordering::Relaxed);
    let fail = |reason: EndReason, code: Option<u16>| {
        let inner = inner.clone();
        let room = room.clone();
        async move {
            inner.stats.outbound_failed.fetch_add(1, Ordering::Relaxed);
            status(&inner, &room, reason.as_str(), code);
            tracing::info!(call = %call, reason = reason.as_str(), code, "SIP: outbound call did not connect");
            let _ = inner.calls.end(call, room.as_str(), reason.as_str()).await;
        }
    };
    let Some((socket, lease)) = inner.rtp_socket().await else {
        return fail(EndReason::Failed, Some(503)).await;
    };
    let local = sdp_addr(&inner, lease.port());
    let session_id: u64 = rand::random::<u32>() as u64;
    let offer = sdp::offer(
        &inner.codecs,
        local,
        inner.cfg.ptime_ms,
        Direction::SendRecv,
        session_id,
        1,
    );
    let mut callee = trunk.clone();
    callee.auth = Some(rsipstack::sip::uri::Auth {
        user: number.clone(),
        password: None,
    });
    let caller_user = from
        .as_deref()
        .and_then(route::normalise_number)
        .unwrap_or_else(|| "commhub".into());
    let caller =
        Uri::try_from(format!("sip:{caller_user}@{}", inner.host).as_str()).unwrap_or_default();
    let credential = (!inner.cfg.trunk_username.is_empty()).then(|| Credential {
        username: inner.cfg.trunk_username.clone(),
        password: inner.cfg.trunk_password.clone(),
        realm: None,
        auth_username: None,
    });
    let (state_tx, mut state_rx) = inner.dialogs.new_dialog_state_channel();
    let opt = InviteOption {
        caller,
        callee,
        contact: inner.contact(),
        content_type: Some("application/sdp".into()),
        offer: Some(offer.into_bytes()),
        credential,
        ..Default::default()
    };
    let (dialog, mut result) = match inner.dialogs.do_invite_async(opt, state_tx) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "SIP: INVITE to the trunk could not be sent");
            return fail(EndReason::Failed, None).await;
        }
    };
    tracing::info!(call = %call, number = %route::redact_number(&number), "SIP: dialing");
    status(&inner, &room, "dialing", None);
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
    let entry = inner.register(room.as_str(), ctl_tx);
    let ring = tokio::time::sleep(Duration::from_secs(inner.cfg.ring_timeout_secs));
    tokio::pin!(ring);
    let mut timed_out = false;
    let mut hung_up = false;
    // Early media: the leg joins at a 183 with SDP.
    let mut early: Option<(media::pstn::LegHandle, Negotiated)> = None;
    let mut socket = Some(socket);
    let display = format!("Phone {}", route::redact_number(&number));
    let final_resp = loop {
        tokio::select! {
            r = &mut result => break r.ok().and_then(|r| r.ok()).and_then(|(_, resp)| resp),
            st = state_rx.recv() => {
                if let Some(DialogState::Early(_, resp)) = st {
                    let code = u16::from(resp.status_code.clone());
                    status(&inner, &room, if code == 183 { "early_media" } else { "ringing" }, Some(code));
                    if early.is_none() && !resp.body.is_empty()
                        && let Some(n) = answer_of(&inner, &resp.body)
                        && let Some(s) = socket.take()
                        && let Some(m) = join(&inner, call, &room, &display, &number, s, &n).await
                    {
                        early = Some((m, n));
                    }
                }
            },
            c = ctl_rx.recv() => {
                if matches!(c, Some(LegCtl::Hangup) | None) && !hung_up {
                    hung_up = true;
                    let _ = dialog.hangup().await;
                }
            },
            _ = &mut ring, if !timed_out => {
                timed_out = true;
                let _ = dialog.hangup().await;
            },
        }
    };
    let answered = final_resp
        .as_ref()
        .filter(|r| r.status_code.kind() == StatusCodeKind::Successful);
    let Some(resp) = answered else {
        inner.unregister(room.as_str(), entry);
        if let Some((m, _)) = early {
            let _ = m
                .commands
                .send(media::pstn::LegCommand::Stop(LeaveReason::Left));
        }
        if hung_up {
            // call-end asked for it: the call is ending with its own reason.
            status(&inner, &room, "cancelled", None);
            return;
        }
        let code = final_resp.map(|r| u16::from(r.status_code));
        return fail(failure_reason(code.unwrap_or(408), timed_out), code).await;
    };
    inner.unregister(room.as_str(), entry);
    if hung_up {
        // Answered while our CANCEL crossed it: rsipstack BYEs such a 2xx itself.
        return;
    }
    let negotiated = match answer_of(&inner, &resp.body) {
        Some(n) => n,
        None => {
            let _ = dialog.bye().await;
            return fail(EndReason::Failed, Some(488)).await;
        }
    };
    let media = match early {
        Some((m, n)) => {
            if n != negotiated {
                let _ = m.commands.send(media::pstn::LegCommand::Update(params(
                    &inner,
                    &negotiated,
                    None,
                )));
            }
            m
        }
        None => {
            let Some(s) = socket.take() else { return };
            match join(&inner, call, &room, &display, &number, s, &negotiated).await {
                Some(m) => m,
                None => {
                    let _ = dialog.bye().await;
                    return fail(EndReason::Failed, None).await;
                }
            }
        }
    };
    inner
        .stats
        .outbound_answered
        .fetch_add(1, Ordering::Relaxed);
    status(&inner, &room, "answered", Some(200));
    super::leg::run(Running {
        inner: inner.clone(),
        call,
        room,
        dialog: LegDialog::new(dialog),
        state_rx,
        media,
        negotiated,
        local,
        session_id,
        version: 1,
        session: None,
        webrtc_answer: None,
        srtp_local: None,
        _lease: Some(lease),
    })
    .await;
}

fn answer_of(inner: &Inner, body: &[u8]) -> Option<Negotiated> {
    let text = std::str::from_utf8(body).ok()?;
    let remote = sdp::parse(text).ok()?;
    sdp::accept_answer(&remote, &inner.codecs, inner.cfg.ptime_ms).ok()
}

/// The leg joins the room (admitted like any joiner) and its media starts.
async fn join(
    inner: &Arc<Inner>,
    call: CallId,
    room: &RoomName,
    display: &str,
    number: &str,
    socket: tokio::net::UdpSocket,
    n: &Negotiated,
) -> Option<media::pstn::LegHandle> {
    inner
        .calls
        .admit(room.as_str(), Some(call), None)
        .await
        .ok()?;
    let port = inner
        .sfu
        .join_leg(room.as_str(), display.to_string(), "pstn".into())
        .ok()?;
    let participant = port.id().to_string();
    super::inbound::joined(
        inner,
        room.as_str(),
        &participant,
        display,
        Some(number.to_string()),
    )
    .await;
    media::pstn::start(
        port,
        media::pstn::LegIo::Udp(socket),
        params(inner, n, None),
        inner.pstn.clone(),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_end_reasons() {
        assert_eq!(failure_reason(486, false), EndReason::Busy);
        assert_eq!(failure_reason(603, false), EndReason::Busy);
        assert_eq!(failure_reason(480, false), EndReason::NoAnswer);
        assert_eq!(failure_reason(487, true), EndReason::NoAnswer);
        assert_eq!(failure_reason(500, true), EndReason::NoAnswer);
        assert_eq!(failure_reason(404, false), EndReason::Failed);
    }
}
