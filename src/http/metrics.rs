//! Health, readiness and Prometheus metrics.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::http::AppState;

pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Ready unless shutting down or out of media ports.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (leased, capacity) = state.sfu.ports();
    if !state.ready.load(Ordering::Relaxed) || state.sfu.is_closing() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        );
    }
    if leased >= capacity {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no free media ports\n".to_string(),
        );
    }
    (StatusCode::OK, "ready\n".to_string())
}

/// Prometheus text exposition (version 0.0.4).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let s = state.sfu.stats().snapshot();
    let (leased, capacity) = state.sfu.ports();
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    metric("commhub_rooms", "gauge", "Open rooms.", s.rooms.to_string());
    metric(
        "commhub_participants",
        "gauge",
        "Participants in all rooms.",
        s.participants.to_string(),
    );
    metric(
        "commhub_subscribers",
        "gauge",
        "Subscribe connections (signaling and WHEP).",
        s.subscribers.to_string(),
    );
    metric(
        "commhub_rtp_packets_in_total",
        "counter",
        "RTP packets received from publishers.",
        s.packets_in.to_string(),
    );
    metric(
        "commhub_rtp_bytes_in_total",
        "counter",
        "RTP payload bytes received from publishers.",
        s.bytes_in.to_string(),
    );
    metric(
        "commhub_rtp_packets_out_total",
        "counter",
        "RTP packets forwarded to subscribers.",
        s.packets_out.to_string(),
    );
    metric(
        "commhub_rtp_bytes_out_total",
        "counter",
        "RTP payload bytes forwarded to subscribers.",
        s.bytes_out.to_string(),
    );
    metric(
        "commhub_subscriber_drops_total",
        "counter",
        "Packets dropped because a subscriber's queue was full.",
        s.subscriber_drops.to_string(),
    );
    metric(
        "commhub_tap_drops_total",
        "counter",
        "Packets a tap (e.g. the recorder) could not take.",
        s.tap_drops.to_string(),
    );
    metric(
        "commhub_forward_errors_total",
        "counter",
        "Errors writing RTP to subscribers.",
        s.forward_errors.to_string(),
    );
    metric(
        "commhub_media_timeouts_total",
        "counter",
        "Connections given up after failing or not (re)connecting in time.",
        s.media_timeouts.to_string(),
    );
    metric(
        "commhub_srtp_aead_gcm_total",
        "counter",
        "Peer connections whose DTLS handshake chose an AEAD AES-GCM SRTP profile.",
        s.srtp_aead_gcm.to_string(),
    );
    metric(
        "commhub_srtp_aes_cm_total",
        "counter",
        "Peer connections whose DTLS handshake chose AES-CM with HMAC-SHA1 (client offered no GCM).",
        s.srtp_aes_cm.to_string(),
    );
    let e = state.sfu.engine_counters();
    for (name, help, v) in [
        (
            "commhub_media_engine_datagrams_in_total",
            "Datagrams received on the media engine's shared sockets.",
            e.datagrams_in,
        ),
        (
            "commhub_media_engine_datagrams_out_total",
            "Datagrams sent from the media engine's shared sockets.",
            e.datagrams_out,
        ),
        (
            "commhub_media_engine_junk_total",
            "Datagrams dropped on a shared socket: no STUN, DTLS or RTP first byte.",
            e.junk,
        ),
        (
            "commhub_media_engine_bad_stun_total",
            "Datagrams dropped on a shared socket: STUN that does not parse.",
            e.bad_stun,
        ),
        (
            "commhub_media_engine_unknown_source_total",
            "Datagrams dropped on a shared socket: DTLS, RTP or STUN responses from an address no connection checked from.",
            e.unknown_source,
        ),
        (
            "commhub_media_engine_unknown_ufrag_total",
            "Connectivity checks dropped on a shared socket: no connection has their ICE ufrag.",
            e.stun_unknown_ufrag,
        ),
        (
            "commhub_media_engine_srtp_failures_total",
            "RTP datagrams from connected peers that yielded no packet (authentication, replay).",
            e.srtp_failures,
        ),
        (
            "commhub_media_engine_send_errors_total",
            "Datagrams a shared socket would not take (full send buffer) or refused.",
            e.send_errors,
        ),
    ] {
        metric(name, "counter", help, v.to_string());
    }
    metric(
        "commhub_media_engine_ports",
        "gauge",
        "UDP ports of the media engine's workers (one shared socket each).",
        state.sfu.engine_ports().len().to_string(),
    );
    metric(
        "commhub_media_ports_leased",
        "gauge",
        "UDP ports in use by peer connections.",
        leased.to_string(),
    );
    metric(
        "commhub_media_ports_capacity",
        "gauge",
        "UDP ports in the configured range.",
        capacity.to_string(),
    );
    let w = &state.store.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    metric(
        "commhub_store_writes_total",
        "counter",
        "Writes (calls, participants, recordings, consent) stored in the database.",
        load(&w.written).to_string(),
    );
    metric(
        "commhub_store_outbox_queued_total",
        "counter",
        "Writes that went to the local outbox because the database was unreachable.",
        load(&w.queued).to_string(),
    );
    metric(
        "commhub_store_outbox_pending",
        "gauge",
        "Writes waiting in the local outbox now.",
        load(&w.pending).to_string(),
    );
    metric(
        "commhub_store_rejected_total",
        "counter",
        "Writes the database refused for good (kept in the rejected file).",
        load(&w.rejected).to_string(),
    );
    metric(
        "commhub_store_degraded",
        "gauge",
        "1 while the database is unreachable.",
        load(&w.degraded).to_string(),
    );
    let q = state.calls.queue_stats();
    let c = state.calls.stats();
    metric(
        "commhub_call_events_total",
        "counter",
        "Events handed to the call coordinator (room, recording, admission, API).",
        load(&q.events).to_string(),
    );
    metric(
        "commhub_call_events_pending",
        "gauge",
        "Events waiting for the call coordinator now.",
        load(&q.pending).to_string(),
    );
    metric(
        "commhub_call_events_over_capacity_total",
        "counter",
        "Events queued past the coordinator's capacity by producers that cannot wait (kept, not dropped).",
        load(&q.over_capacity).to_string(),
    );
    metric(
        "commhub_call_inputs_invalid_total",
        "counter",
        "Coordinator inputs that could not be used (bad ids, events for unknown recordings), each logged.",
        load(&c.invalid).to_string(),
    );
    metric(
        "commhub_recording_stop_timeouts_total",
        "counter",
        "Recordings that did not finalise within 30 s of their stop.",
        load(&c.stop_timeouts).to_string(),
    );
    metric(
        "commhub_calls_abandoned_total",
        "counter",
        "Calls ended as abandoned (nobody joined within calls.abandon_after_secs).",
        load(&c.abandoned).to_string(),
    );
    if let Some(sip) = &state.sip {
        let p = sip.pstn_stats();
        let st = sip.stats();
        let rows: [(&str, &str, &str, &std::sync::atomic::AtomicU64); 29] = [
            (
                "commhub_pstn_legs",
                "gauge",
                "Phone legs with media running.",
                &p.legs,
            ),
            (
                "commhub_pstn_rtp_in_total",
                "counter",
                "RTP packets received from phone legs.",
                &p.rtp_in,
            ),
            (
                "commhub_pstn_rtp_out_total",
                "counter",
                "RTP packets sent to phone legs.",
                &p.rtp_out,
            ),
            (
                "commhub_pstn_rtp_invalid_total",
                "counter",
                "Datagrams at leg ports that were not RTP of a negotiated payload type (dropped).",
                &p.rtp_invalid,
            ),
            (
                "commhub_pstn_rtp_foreign_total",
                "counter",
                "RTP from an address other than the latched one (dropped).",
                &p.rtp_foreign,
            ),
            (
                "commhub_pstn_rtcp_in_total",
                "counter",
                "RTCP packets from phone legs (read, not used).",
                &p.rtcp_in,
            ),
            (
                "commhub_pstn_jitter_missing_total",
                "counter",
                "Uplink frames concealed (lost or late).",
                &p.jitter_missing,
            ),
            (
                "commhub_pstn_jitter_late_total",
                "counter",
                "Uplink packets that arrived after their turn (dropped).",
                &p.jitter_late,
            ),
            (
                "commhub_pstn_decode_errors_total",
                "counter",
                "Payloads that did not decode.",
                &p.decode_errors,
            ),
            (
                "commhub_pstn_downlink_overflow_total",
                "counter",
                "Times a leg's queue of room audio passed 300 ms and was trimmed.",
                &p.downlink_overflow,
            ),
            (
                "commhub_pstn_send_errors_total",
                "counter",
                "RTP sends to phone legs that failed.",
                &p.send_errors,
            ),
            (
                "commhub_pstn_dtmf_in_total",
                "counter",
                "Digits received from phone legs (RFC 4733).",
                &p.dtmf_in,
            ),
            (
                "commhub_pstn_dtmf_out_total",
                "counter",
                "Digits sent to phone legs (RFC 4733).",
                &p.dtmf_out,
            ),
            (
                "commhub_pstn_rtp_timeouts_total",
                "counter",
                "Legs hung up after sip.rtp_timeout_secs without RTP.",
                &p.rtp_timeouts,
            ),
            (
                "commhub_sip_invites_total",
                "counter",
                "New INVITEs received.",
                &st.invites,
            ),
            (
                "commhub_sip_answered_total",
                "counter",
                "Inbound legs answered (200).",
                &st.answered,
            ),
            (
                "commhub_sip_refused_source_total",
                "counter",
                "INVITEs refused (403) for their source address.",
                &st.refused_source,
            ),
            (
                "commhub_sip_challenged_total",
                "counter",
                "INVITEs answered 407 (digest challenge) for a trunk with credentials.",
                &st.challenged,
            ),
            (
                "commhub_sip_refused_auth_total",
                "counter",
                "INVITEs refused (403) for wrong digest credentials.",
                &st.refused_auth,
            ),
            (
                "commhub_sip_dropped_source_total",
                "counter",
                "INVITEs dropped unanswered for their source address.",
                &st.dropped_source,
            ),
            (
                "commhub_sip_refused_rate_total",
                "counter",
                "INVITEs refused (503) over sip.invites_per_sec_per_source.",
                &st.refused_rate,
            ),
            (
                "commhub_sip_refused_capacity_total",
                "counter",
                "INVITEs refused (503) at sip.max_legs.",
                &st.refused_capacity,
            ),
            (
                "commhub_sip_not_found_total",
                "counter",
                "INVITEs for an unknown call or number (404).",
                &st.not_found,
            ),
            (
                "commhub_sip_not_acceptable_total",
                "counter",
                "INVITEs with an unusable offer (488).",
                &st.not_acceptable,
            ),
            (
                "commhub_sip_cancelled_total",
                "counter",
                "New inbound calls the caller cancelled while ringing.",
                &st.cancelled,
            ),
            (
                "commhub_sip_outbound_total",
                "counter",
                "Outbound calls dialled through the trunk.",
                &st.outbound,
            ),
            (
                "commhub_sip_outbound_answered_total",
                "counter",
                "Outbound calls answered.",
                &st.outbound_answered,
            ),
            (
                "commhub_sip_outbound_failed_total",
                "counter",
                "Outbound calls that did not connect (busy, no answer, failed).",
                &st.outbound_failed,
            ),
            (
                "commhub_sip_session_expired_total",
                "counter",
                "Legs ended because their RFC 4028 session expired.",
                &st.session_expired,
            ),
        ];
        for (name, kind, help, v) in rows {
            metric(name, kind, help, load(v).to_string());
        }
    }
    if let Some(sms) = &state.sms {
        let st = sms.stats();
        let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        let rows: [(&str, &str, &str, &std::sync::atomic::AtomicU64); 19] = [
            (
                "commhub_sms_sent_total",
                "counter",
                "Message parts the carrier accepted.",
                &st.sent,
            ),
            (
                "commhub_sms_submit_errors_total",
                "counter",
                "Parts the carrier refused (transient or permanent).",
                &st.submit_errors,
            ),
            (
                "commhub_sms_receipts_total",
                "counter",
                "Delivery receipts received (SMPP or webhook).",
                &st.receipts,
            ),
            (
                "commhub_sms_receipts_orphaned_total",
                "counter",
                "Receipts for an id not known yet (kept pending).",
                &st.receipts_orphaned,
            ),
            (
                "commhub_sms_inbound_total",
                "counter",
                "Inbound messages stored.",
                &st.inbound,
            ),
            (
                "commhub_sms_inbound_parts_total",
                "counter",
                "Inbound parts of multipart messages.",
                &st.inbound_parts,
            ),
            (
                "commhub_sms_blocked_total",
                "counter",
                "Sends refused because the recipient opted out.",
                &st.blocked,
            ),
            (
                "commhub_sms_retries_total",
                "counter",
                "Transient failures scheduled for another attempt.",
                &st.retries,
            ),
            (
                "commhub_sms_throttled_total",
                "counter",
                "Throttling answers (ESME_RTHROTTLED, ESME_RMSGQFUL, HTTP 429).",
                &st.throttled,
            ),
            (
                "commhub_sms_possible_duplicates_total",
                "counter",
                "Late acceptances of parts already resent.",
                &st.possible_duplicates,
            ),
            (
                "commhub_sms_duplicates_total",
                "counter",
                "Inbound messages or parts seen before (stored once).",
                &st.duplicates,
            ),
            (
                "commhub_sms_bind_failures_total",
                "counter",
                "SMPP binds refused or connections that failed.",
                &st.bind_failures,
            ),
            (
                "commhub_sms_bad_frames_total",
                "counter",
                "SMPP frames that could not be decoded.",
                &st.bad_frames,
            ),
            (
                "commhub_sms_failed_total",
                "counter",
                "Messages that failed for good.",
                &st.failed,
            ),
            (
                "commhub_sms_webhook_refused_total",
                "counter",
                "Webhook requests refused (token, signature or body).",
                &st.webhook_refused,
            ),
            (
                "commhub_sms_queue_depth",
                "gauge",
                "Messages accepted and not yet accepted by the carrier.",
                &st.queue_depth,
            ),
            (
                "commhub_sms_in_flight",
                "gauge",
                "Parts submitted and not yet answered.",
                &st.in_flight,
            ),
            (
                "commhub_sms_bind_state_tx",
                "gauge",
                "Sending bind: 0 down, 1 binding, 2 bound (HTTP mode: 2).",
                &st.bind_state_tx,
            ),
            (
                "commhub_sms_bind_state_rx",
                "gauge",
                "Receiver bind (transmitter+receiver mode): 0 down, 1 binding, 2 bound.",
                &st.bind_state_rx,
            ),
        ];
        for (name, kind, help, v) in rows {
            metric(name, kind, help, load(v).to_string());
        }
    }
    metric(
        "commhub_uptime_seconds",
        "gauge",
        "Seconds since start.",
        state.started.elapsed().as_secs().to_string(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
