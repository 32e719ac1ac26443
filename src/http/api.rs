//! The call API: the platform's functions (`/functions/v1/call-create`, `call-end`,
//! `recording-upload`) at the paths the web app and the PBX already use, `/api/v1` for call
//! history, recordings and consent, `/openapi.json`, and (dev mode only) `/dev/token`.
//!
//! Auth: `/api/v1` and call-create/call-end take `Authorization: Bearer <api key>`
//! (`auth.api_keys`); recording-upload takes the PBX token (`auth.pbx_token`, PBX_AUTH_TOKEN).
//! Every comparison is constant-time. With `auth.dev_mode` the key may be left out.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

use crate::auth::{turn_credentials, unix_now};
use crate::calls::NewCall;
use crate::config::Config;
use crate::domain::{CallKind, CallStatus, Direction, RecordingStatus, Role, or_list};
use crate::http::AppError;
use crate::http::AppState;
use crate::http::extract::ApiKey;
use crate::store::writer::Durable;
use crate::store::{CallFilter, ConsentRow, StoreOp};

const OPENAPI: &str = include_str!("openapi.json");

pub fn routes(state: &AppState) -> Router<AppState> {
    let json_limit = state.cfg.api.max_json_bytes;
    let upload_limit = state.cfg.api.max_upload_bytes;
    Router::new()
        .route(
            "/functions/v1/call-create",
            post(call_create).layer(DefaultBodyLimit::max(json_limit)),
        )
        .route(
            "/functions/v1/call-end",
            post(call_end).layer(DefaultBodyLimit::max(json_limit)),
        )
        .route(
            "/functions/v1/recording-upload",
            // The handler answers 413 itself for bodies it can see are too large.
            post(crate::http::upload::recording_upload)
                .layer(DefaultBodyLimit::max(upload_limit.saturating_add(1))),
        )
        .route("/api/v1/calls", get(list_calls))
        .route("/api/v1/calls/{id}", get(get_call))
        .route(
            "/api/v1/calls/{id}/tokens",
            post(issue_token).layer(DefaultBodyLimit::max(json_limit)),
        )
        .route(
            "/api/v1/calls/{id}/consent",
            post(log_consent).layer(DefaultBodyLimit::max(json_limit)),
        )
        .route(
            "/api/v1/calls/{id}/dtmf",
            post(send_dtmf).layer(DefaultBodyLimit::max(json_limit)),
        )
        .route("/api/v1/recordings/{id}/{format}", get(download))
        .route("/dev/token", get(dev_token))
        .route("/openapi.json", get(openapi))
}

/// Log how the API is protected at start.
pub fn warn_about_auth(cfg: &Config) {
    let a = &cfg.auth;
    if a.dev_mode {
        tracing::warn!(
            "DEV MODE: /dev/token hands out join tokens to anyone and /api/v1 needs no key; never expose this server"
        );
    }
    if !a.enabled {
        tracing::warn!("auth.enabled = false: joins need no token and the API no key");
    } else if a.api_keys.is_empty() && !a.dev_mode {
        tracing::info!(
            "auth.api_keys is empty: /api/v1 and call-create/call-end refuse every request"
        );
    }
    if a.jwt_secret.is_empty() {
        tracing::info!(
            "auth.jwt_secret is empty: join tokens are signed with a random per-process key"
        );
    }
    if a.pbx_token.is_empty() {
        tracing::info!(
            "PBX_AUTH_TOKEN (auth.pbx_token) is not set: recording-upload refuses every request"
        );
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, AppError> {
    match body {
        Ok(Json(b)) => Ok(b),
        Err(JsonRejection::MissingJsonContentType(_)) => Err(AppError::UnsupportedMediaType(
            "send JSON with Content-Type: application/json".into(),
        )),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(AppError::TooLarge("the request body is too large".into()))
        }
        Err(e) => Err(AppError::BadRequest(e.body_text())),
    }
}

pub use crate::domain::valid_e164;

fn number(field: &str, v: Option<String>) -> Result<Option<String>, AppError> {
    match v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(n) if valid_e164(&n) => Ok(Some(n)),
        Some(_) => Err(AppError::coded(
            StatusCode::BAD_REQUEST,
            "invalid_number",
            format!("`{field}` must be an E.164 number such as +14155550123"),
        )),
    }
}

fn role(v: Option<&str>, default: &str) -> Result<String, AppError> {
    let r = v.unwrap_or(default).trim().to_ascii_lowercase();
    match r.parse::<Role>() {
        Ok(r) => Ok(r.as_str().to_string()),
        Err(_) => Err(AppError::BadRequest(format!(
            "role must be one of {}",
            Role::TEXTS.join(", ")
        ))),
    }
}

fn identity(v: Option<&str>) -> Result<String, AppError> {
    let id = v
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("user-{}", &Uuid::new_v4().simple().to_string()[..12]));
    if id.len() > 128 || id.chars().any(|c| c.is_control() || c == ':') {
        return Err(AppError::BadRequest(
            "identity must be at most 128 characters, without control characters or ':'".into(),
        ));
    }
    Ok(id)
}

/// The signaling URL clients should use.
fn signaling_url(state: &AppState, headers: &HeaderMap) -> String {
    let ep = state.cfg.api.sfu_endpoint.trim_end_matches('/');
    if !ep.is_empty() {
        return if ep.ends_with("/ws") {
            ep.to_string()
        } else {
            format!("{ep}/ws")
        };
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| state.cfg.server.listen.to_string());
    let scheme = if state.cfg.server.tls_cert.is_some() {
        "wss"
    } else {
        "ws"
    };
    format!("{scheme}://{host}/ws")
}

/// `iceServers` for a participant (see [`crate::auth::ice_servers`]).
pub fn ice_servers(cfg: &Config, user: &str) -> Value {
    serde_json::to_value(crate::auth::ice_servers(cfg, user)).unwrap_or(Value::Array(vec![]))
}

/// A display name for a token: at most 64 characters, no control characters.
fn display_name(v: Option<&str>) -> Result<Option<&str>, AppError> {
    match v.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) if n.chars().count() > 64 || n.chars().any(char::is_control) => {
            Err(AppError::BadRequest(
                "display_name must be at most 64 characters, without control characters".into(),
            ))
        }
        other => Ok(other),
    }
}

fn token_response(
    state: &AppState,
    headers: &HeaderMap,
    call_id: Option<Uuid>,
    room: &str,
    ident: &str,
    role: &str,
    name: Option<&str>,
) -> Value {
    let ttl = Duration::from_secs(state.cfg.auth.token_ttl_secs);
    let cid = call_id.map(|c| c.to_string());
    let (token, claims) = state
        .tokens
        .issue(ident, room, cid.as_deref(), role, name, ttl);
    json!({
        "call_id": cid,
        "room": room,
        "identity": ident,
        "role": role,
        "token": token,
        "token_expires_at": claims.exp,
        "signaling_url": signaling_url(state, headers),
        "iceServers": ice_servers(&state.cfg, ident),
    })
}

#[derive(Debug, Deserialize)]
pub struct CallCreate {
    pub kind: Option<String>,
    pub direction: Option<String>,
    #[serde(alias = "from_number")]
    pub from: Option<String>,
    #[serde(alias = "to_number")]
    pub to: Option<String>,
    pub record: Option<bool>,
    /// The creator's participant identity, display name and role (default agent).
    pub identity: Option<String>,
    pub display_name: Option<String>,
    pub role: Option<String>,
}

async fn call_create(
    State(state): State<AppState>,
    _key: ApiKey,
    headers: HeaderMap,
    body: Result<Json<CallCreate>, JsonRejection>,
) -> Result<Response, AppError> {
    let b = json_body(body)?;
    let kind = b.kind.as_deref().unwrap_or("webrtc").to_ascii_lowercase();
    if kind.parse::<CallKind>().is_err() {
        return Err(AppError::BadRequest(format!(
            "kind must be {}",
            or_list(CallKind::TEXTS)
        )));
    }
    let direction = b
        .direction
        .as_deref()
        .unwrap_or("outbound")
        .to_ascii_lowercase();
    if direction.parse::<Direction>().is_err() {
        return Err(AppError::BadRequest(format!(
            "direction must be {}",
            or_list(Direction::TEXTS)
        )));
    }
    let from = number("from", b.from)?;
    let to = number("to", b.to)?;
    if kind != CallKind::Webrtc.as_str() && from.is_none() && to.is_none() {
        return Err(AppError::BadRequest(format!(
            "a {kind} call needs `to` (or `from`): the phone number"
        )));
    }
    let ident = identity(b.identity.as_deref())?;
    let role = role(b.role.as_deref(), "agent")?;
    let record = b.record.unwrap_or(state.cfg.recording.enabled);
    let (call, durable) = state
        .calls
        .create(NewCall {
            kind,
            direction,
            from_number: from,
            to_number: to,
            record,
        })
        .await;
    if durable == Durable::Rejected {
        return Err(AppError::Internal(anyhow::anyhow!(
            "the call row was refused by the database"
        )));
    }
    tracing::info!(call = %call.id, queued = durable == Durable::Queued, "call created");
    // An outbound phone call is dialled through the SIP trunk right away.
    let dial = if call.kind == CallKind::Pstn.as_str()
        && call.direction == Direction::Outbound.as_str()
        && let Some(to) = call.to_number.as_deref()
    {
        let r = match &state.sip {
            Some(sip) => sip.dial(
                crate::domain::CallId(call.id),
                &call.room,
                to,
                call.from_number.as_deref(),
            ),
            None => Err("the SIP bridge is disabled (sip.enabled = false)".into()),
        };
        match r {
            Ok(()) => json!({"status": "dialing"}),
            Err(e) => json!({"status": "not_dialed", "reason": e}),
        }
    } else {
        Value::Null
    };
    let mut out = token_response(
        &state,
        &headers,
        Some(call.id),
        &call.room,
        &ident,
        &role,
        display_name(b.display_name.as_deref())?,
    );
    out["status"] = json!(call.status);
    out["record"] = json!(call.record);
    out["sfu_endpoint"] = json!(state.cfg.api.sfu_endpoint);
    if !dial.is_null() {
        out["dial"] = dial;
    }
    out["call"] = serde_json::to_value(&call).unwrap_or(Value::Null);
    out["turn"] = if state.cfg.turn.shared_secret.is_empty() {
        Value::Null
    } else {
        let c = turn_credentials(
            &state.cfg.turn.shared_secret,
            &ident,
            Duration::from_secs(state.cfg.turn.credential_ttl_secs),
            unix_now(),
        );
        json!({"urls": state.cfg.turn_urls(), "username": c.username, "credential": c.credential,
               "ttl": c.ttl, "expires_at": c.expires_at})
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

fn parse_call_id(s: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(s.trim()).map_err(|_| {
        AppError::coded(
            StatusCode::BAD_REQUEST,
            "invalid_call_id",
            "call_id must be a UUID",
        )
    })
}

/// The call from the database.
async fn find_call(state: &AppState, id: &Uuid) -> Result<Option<crate::store::Call>, AppError> {
    state.store.store.call(id).await.map_err(AppError::db)
}

/// The call from the database or, while the database is unreachable, what this instance
/// knows of it (its room and whether it ended), so calls can still get tokens and be ended;
/// those writes wait in the outbox.
async fn find_call_or_live(
    state: &AppState,
    id: &Uuid,
) -> Result<Option<crate::store::Call>, AppError> {
    match state.store.store.call(id).await {
        Ok(c) => Ok(c),
        Err(e) if crate::store::is_transient(&e) => {
            match state.calls.live_call(crate::domain::CallId(*id)).await {
                Some((room, ended)) => {
                    tracing::warn!(call = %id, error = %e, "database unreachable; using the live call");
                    Ok(Some(crate::store::Call {
                        status: if ended {
                            CallStatus::Ended
                        } else {
                            CallStatus::Active
                        }
                        .as_str()
                        .into(),
                        ..crate::store::Call::adhoc(*id, room.as_str())
                    }))
                }
                None => Err(AppError::db(e)),
            }
        }
        Err(e) => Err(AppError::db(e)),
    }
}

fn unknown_call() -> AppError {
    AppError::coded(StatusCode::NOT_FOUND, "unknown_call", "no such call")
}

#[derive(Debug, Deserialize)]
pub struct CallEnd {
    pub call_id: String,
    pub reason: Option<String>,
}

async fn call_end(
    State(state): State<AppState>,
    _key: ApiKey,
    body: Result<Json<CallEnd>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let b = json_body(body)?;
    let id = parse_call_id(&b.call_id)?;
    let reason = b
        .reason
        .map(|r| r.trim().chars().take(64).collect::<String>())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "ended_by_api".into());
    let call = find_call_or_live(&state, &id)
        .await?
        .ok_or_else(unknown_call)?;
    if call.status == CallStatus::Ended.as_str() {
        return Ok(Json(json!({
            "call_id": id, "status": "ended", "already_ended": true, "call": call,
        })));
    }
    // Phone legs still ringing are cancelled; answered ones get their BYE as the room ends.
    if let Some(sip) = &state.sip {
        sip.hangup_room(&call.room);
    }
    let (_fresh, durable) = state
        .calls
        .end(crate::domain::CallId(id), &call.room, &reason)
        .await;
    // The recording's row arrives through the store queue; wait for it to be tried.
    state.store.flush().await;
    let call = find_call(&state, &id).await.ok().flatten();
    let recordings = state.store.store.recordings(&id).await.unwrap_or_default();
    Ok(Json(json!({
        "call_id": id,
        "status": "ended",
        "already_ended": false,
        "queued": durable == Durable::Queued,
        "duration_sec": call.as_ref().and_then(|c| c.duration_sec),
        "call": call,
        "recordings": recordings,
    })))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub direction: Option<String>,
    pub number: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

fn time_param(name: &str, v: Option<String>) -> Result<Option<DateTime<Utc>>, AppError> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                AppError::BadRequest(format!(
                    "`{name}` must be an RFC 3339 time, e.g. 2026-11-24T00:00:00Z"
                ))
            })
    })
    .transpose()
}

fn one_of(name: &str, v: Option<String>, allowed: &[&str]) -> Result<Option<String>, AppError> {
    match v {
        Some(s) if !allowed.contains(&s.as_str()) => Err(AppError::BadRequest(format!(
            "`{name}` must be one of {}",
            allowed.join(", ")
        ))),
        other => Ok(other),
    }
}

async fn list_calls(
    State(state): State<AppState>,
    _key: ApiKey,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = q.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let api = &state.cfg.api;
    let limit = q.limit.unwrap_or(api.page_size);
    if limit == 0 || limit > api.max_page_size {
        return Err(AppError::BadRequest(format!(
            "limit must be 1..={}",
            api.max_page_size
        )));
    }
    let f = CallFilter {
        status: one_of("status", q.status, CallStatus::TEXTS)?,
        kind: one_of("kind", q.kind, CallKind::TEXTS)?,
        direction: one_of("direction", q.direction, Direction::TEXTS)?,
        number: number("number", q.number)?,
        since: time_param("since", q.since)?,
        until: time_param("until", q.until)?,
        limit,
        offset: match q.offset.unwrap_or(0) {
            o if o <= 1_000_000_000 => o,
            _ => return Err(AppError::BadRequest("offset must be 0..=1000000000".into())),
        },
    };
    let (calls, total) = state.store.store.list_calls(&f).await?;
    let next = f.offset + calls.len() as u64;
    Ok(Json(json!({
        "calls": calls,
        "total": total,
        "limit": limit,
        "offset": f.offset,
        "next_offset": if (next as i64) < total { Some(next) } else { None },
    })))
}

fn recording_json(r: &crate::store::RecordingRow) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if r.status == RecordingStatus::Ready.as_str() {
        v["flac_url"] = json!(format!("/api/v1/recordings/{}/flac", r.id));
        v["mp3_url"] = json!(format!("/api/v1/recordings/{}/mp3", r.id));
    }
    v
}

async fn get_call(
    State(state): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let id = parse_call_id(&id)?;
    let s = &state.store.store;
    let call = s.call(&id).await?.ok_or_else(unknown_call)?;
    let participants = s.participants(&id).await?;
    let recordings = s.recordings(&id).await?;
    let consent = s.consent_events(&id).await?;
    Ok(Json(json!({
        "call": call,
        "participants": participants,
        "recordings": recordings.iter().map(recording_json).collect::<Vec<_>>(),
        "consent_events": consent,
    })))
}

#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    pub identity: Option<String>,
    pub display_name: Option<String>,
    pub role: Option<String>,
}

async fn issue_token(
    State(state): State<AppState>,
    _key: ApiKey,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, AppError> {
    let id = parse_call_id(&id)?;
    let b = json_body(body)?;
    let call = find_call_or_live(&state, &id)
        .await?
        .ok_or_else(unknown_call)?;
    if call.status == CallStatus::Ended.as_str() {
        return Err(AppError::coded(
            StatusCode::CONFLICT,
            "call_ended",
            "the call has ended",
        ));
    }
    let ident = identity(b.identity.as_deref())?;
    let role = role(b.role.as_deref(), "customer")?;
    let out = token_response(
        &state,
        &headers,
        Some(id),
        &call.room,
        &ident,
        &role,
        display_name(b.display_name.as_deref())?,
    );
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    pub kind: String,
    pub participant_id: Option<String>,
    pub note: Option<String>,
}

async fn log_consent(
    State(state): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
    body: Result<Json<ConsentRequest>, JsonRejection>,
) -> Result<Response, AppError> {
    let id = parse_call_id(&id)?;
    let b = json_body(body)?;
    if !["verbal_yes", "verbal_no", "dtmf_1"].contains(&b.kind.as_str()) {
        return Err(AppError::BadRequest(
            "kind must be verbal_yes, verbal_no or dtmf_1".into(),
        ));
    }
    let call = find_call(&state, &id).await?.ok_or_else(unknown_call)?;
    let participant_id = match b.participant_id.as_deref() {
        None => None,
        Some(p) => {
            let pid = Uuid::parse_str(p)
                .map_err(|_| AppError::BadRequest("participant_id must be a UUID".into()))?;
            let ps = state.store.store.participants(&id).await?;
            if !ps.iter().any(|x| x.id == pid) {
                return Err(AppError::BadRequest(
                    "participant_id is not a participant of this call".into(),
                ));
            }
            Some(pid)
        }
    };
    let note = b.note.map(|n| n.chars().take(1000).collect::<String>());
    let now = Utc::now();
    let since = call.answered_at.unwrap_or(call.created_at);
    let row = ConsentRow {
        id: Uuid::new_v4(),
        call_id: id,
        participant_id,
        recording_id: None,
        kind: b.kind,
        offset_ms: (now - since).num_milliseconds().max(0),
        occurred_at: now,
        source: "api".into(),
        note,
    };
    match state.store.write(StoreOp::Consent(row.clone())).await {
        Durable::Rejected => Err(AppError::Internal(anyhow::anyhow!(
            "the consent event was refused by the database"
        ))),
        _ => Ok((StatusCode::CREATED, Json(json!(row))).into_response()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtmfRequest {
    /// Keys to send: `0-9`, `*`, `#`, `A-D`, at most 32.
    pub digits: String,
    /// Only this phone leg (a participant id); default every phone leg of the call.
    pub participant_id: Option<String>,
}

/// Send keys to the call's phone legs (RFC 4733 telephone-events), as the dialer's keypad
/// does: navigating an IVR on the far end.
async fn send_dtmf(
    State(state): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
    body: Result<Json<DtmfRequest>, JsonRejection>,
) -> Result<Response, AppError> {
    let id = parse_call_id(&id)?;
    let b = json_body(body)?;
    let digits = b.digits.trim().to_ascii_uppercase();
    if digits.is_empty()
        || digits.len() > 32
        || !digits
            .chars()
            .all(|c| matches!(c, '0'..='9' | '*' | '#' | 'A'..='D'))
    {
        return Err(AppError::BadRequest(
            "digits must be 1 to 32 of 0-9, *, #, A-D".into(),
        ));
    }
    let call = find_call_or_live(&state, &id)
        .await?
        .ok_or_else(unknown_call)?;
    let Some(sip) = &state.sip else {
        return Err(AppError::coded(
            StatusCode::CONFLICT,
            "no_phone_leg",
            "the SIP bridge is disabled",
        ));
    };
    let sent = sip.send_digits(&call.room, b.participant_id.as_deref(), &digits);
    if sent == 0 {
        return Err(AppError::coded(
            StatusCode::CONFLICT,
            "no_phone_leg",
            "the call has no phone leg to send digits to",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"call_id": id, "digits": digits, "legs": sent})),
    )
        .into_response())
}

async fn download(
    State(state): State<AppState>,
    _key: ApiKey,
    Path((id, format)): Path<(String, String)>,
    req: Request,
) -> Result<Response, AppError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| AppError::BadRequest("the recording id must be a UUID".into()))?;
    let r = state
        .store
        .store
        .recording(&id)
        .await?
        .ok_or_else(|| AppError::NotFound("no such recording".into()))?;
    if r.status != RecordingStatus::Ready.as_str() {
        return Err(AppError::coded(
            StatusCode::CONFLICT,
            "not_ready",
            format!("the recording is {}", r.status),
        ));
    }
    let (key, mime) = match format.as_str() {
        "flac" => (r.flac_key, "audio/flac"),
        "mp3" => (r.mp3_key, "audio/mpeg"),
        _ => return Err(AppError::NotFound("format must be flac or mp3".into())),
    };
    let key = key.ok_or_else(|| AppError::NotFound("no such file".into()))?;
    if key.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(AppError::NotFound("no such file".into()));
    }
    let path = state.cfg.recording.storage_root.join(&key);
    if !path.is_file() {
        return Err(AppError::coded(
            StatusCode::GONE,
            "file_missing",
            "the recording's file is not in storage",
        ));
    }
    let resp = tower_http::services::ServeFile::new_with_mime(
        &path,
        &mime
            .parse()
            .map_err(|_| AppError::Internal(anyhow::anyhow!("mime")))?,
    )
    .oneshot(req)
    .await
    .map_err(|e| AppError::Internal(anyhow::anyhow!("serving {key}: {e}")))?;
    let mut resp = resp.map(axum::body::Body::new);
    let file = key.rsplit('/').next().unwrap_or("recording").to_string();
    if let Ok(v) = format!("inline; filename=\"{file}\"").parse() {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
pub struct DevTokenQuery {
    pub room: String,
    pub name: Option<String>,
    pub role: Option<String>,
    pub identity: Option<String>,
}

async fn dev_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<DevTokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AppError> {
    if !state.cfg.auth.dev_mode {
        return Err(AppError::NotFound(
            "/dev/token exists only with auth.dev_mode = true".into(),
        ));
    }
    let Query(q) = q.map_err(|e| AppError::BadRequest(e.body_text()))?;
    signaling::validate_room_name(&q.room).map_err(|e| AppError::BadRequest(e.message))?;
    let ident = identity(q.identity.as_deref())?;
    let role = role(q.role.as_deref(), "customer")?;
    let call = state.calls.call_of_room(&q.room).await.map(Uuid::from);
    Ok(Json(token_response(
        &state,
        &headers,
        call,
        &q.room,
        &ident,
        &role,
        display_name(q.name.as_deref())?,
    )))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers() {
        for ok in ["+14155550123", "+442071838750", "+12"] {
            assert!(valid_e164(ok), "{ok}");
        }
        for bad in [
            "14155550123",
            "+0123",
            "+1 415",
            "+1234567890123456",
            "+",
            "+1a",
        ] {
            assert!(!valid_e164(bad), "{bad}");
        }
    }

    #[test]
    fn openapi_document_parses_and_names_the_contract_paths() {
        let v: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let paths = v["paths"].as_object().expect("paths");
        for p in [
            "/functions/v1/call-create",
            "/functions/v1/call-end",
            "/functions/v1/recording-upload",
            "/api/v1/calls",
            "/api/v1/calls/{id}",
            "/api/v1/calls/{id}/tokens",
            "/api/v1/calls/{id}/consent",
            "/api/v1/recordings/{id}/{format}",
        ] {
            assert!(paths.contains_key(p), "{p} missing from openapi.json");
        }
    }
}
