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
