//! SMS endpoints (thin: parse, ask `crate::sms::gateway::Sms`, map the result):
//! `sms-send`, the carrier webhooks `sms-webhook-mo` / `sms-webhook-dlr`, the `/api/v1/sms`
//! listings, and `/sms-media/...` (signed links carriers fetch MMS media by).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::extract::ApiKey;
use super::{AppError, AppState};
use crate::auth::{bearer, secret_matches};
use crate::sms::carrier::{self, Event};
use crate::sms::gateway::{Inbound, SendRequest, Sms, SmsError};
use crate::store::sms::SmsFilter;

fn gateway(state: &AppState) -> Result<&Sms, AppError> {
    state
        .sms
        .as_ref()
        .ok_or_else(|| AppError::Unavailable("SMS is not started".into()))
}

impl From<SmsError> for AppError {
    fn from(e: SmsError) -> AppError {
        let msg = e.to_string();
        match e {
            SmsError::Invalid(_) => AppError::coded(StatusCode::BAD_REQUEST, "invalid", msg),
            SmsError::TooLarge(_) => AppError::TooLarge(msg),
            SmsError::Unprocessable(_) => {
                AppError::coded(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", msg)
            }
            SmsError::IdempotencyConflict => AppError::coded(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_conflict",
                msg,
            ),
            SmsError::Off => AppError::coded(StatusCode::SERVICE_UNAVAILABLE, "sms_off", msg),
            SmsError::Store => AppError::Unavailable(msg),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    from: String,
    to: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    media: Vec<MediaItem>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaItem {
    #[serde(default)]
    content_type: String,
    /// base64.
    data: String,
}

/// `POST /functions/v1/sms-send`.
pub async fn sms_send(
    State(state): State<AppState>,
    _key: ApiKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let sms = gateway(&state)?;
    let b: SendBody = serde_json::from_slice(&body).map_err(|e| {
        AppError::BadRequest(format!("the body is not a valid sms-send request: {e}"))
    })?;
    let key = b.idempotency_key.or_else(|| {
        headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut media = Vec::with_capacity(b.media.len());
    for (i, m) in b.media.into_iter().enumerate() {
        let data = b64
            .decode(m.data.trim())
            .map_err(|_| AppError::BadRequest(format!("media[{i}].data is not base64")))?;
        media.push((m.content_type, data));
    }
    let (msg, repeat) = sms
        .send(SendRequest {
            from: b.from.trim().to_string(),
            to: b.to.trim().to_string(),
            body: b.body,
            media,
            idempotency_key: key,
        })
        .await?;
    let status = if repeat {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(message_json(&msg))).into_response())
}

fn message_json(m: &crate::store::sms::SmsMessage) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

/// The webhook token: `Authorization: Bearer` or `?token=`.
fn webhook_token_ok(state: &AppState, headers: &HeaderMap, query: Option<&str>) -> bool {
    let configured = &state.cfg.auth.webhook_token;
    if let Some(t) = bearer(headers)
        && secret_matches(t, configured)
    {
        return true;
    }
    let q = query.unwrap_or("");
    form_urlencoded::parse(q.as_bytes())
        .any(|(k, v)| k == "token" && secret_matches(&v, configured))
}

/// Check the token and the carrier's signature, and parse the event.
fn webhook_event(
    state: &AppState,
    sms: &Sms,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    dlr: bool,
) -> Result<Event, AppError> {
    let refuse = |m: &str| {
        sms.stats()
            .webhook_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        AppError::Unauthorized(m.to_string())
    };
    if state.cfg.auth.webhook_token.is_empty() {
        return Err(refuse(
            "INBOUND_WEBHOOK_TOKEN (auth.webhook_token) is not set: webhooks are refused",
        ));
    }
    if !webhook_token_ok(state, headers, uri.query()) {
        return Err(refuse(
            "a valid webhook token is required: Authorization: Bearer INBOUND_WEBHOOK_TOKEN or ?token=",
        ));
    }
    let bad = |e: carrier::WebhookError| {
        sms.stats()
            .webhook_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        AppError::BadRequest(e.to_string())
    };
    let cfg = sms.config();
    match sms.carrier() {
        "twilio" => {
            let params: Vec<(String, String)> = form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let token = cfg.http.key.split_once(':').map(|(_, t)| t).unwrap_or("");
            let url = format!(
                "{}{}",
                sms.public_base(),
                uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
            );
            let sig = headers
                .get("x-twilio-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !crate::sms::signature::twilio_valid(token, &url, &params, sig) {
                return Err(refuse("X-Twilio-Signature does not match"));
            }
            carrier::twilio(&params).map_err(bad)
        }
        "telnyx" => {
            let h = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            crate::sms::signature::telnyx_verify(
                &cfg.http.telnyx_public_key,
                &h("telnyx-timestamp"),
                body,
                &h("telnyx-signature-ed25519"),
                now,
                300,
            )
            .map_err(|e| refuse(&format!("the Telnyx signature does not verify: {e}")))?;
            carrier::telnyx(body).map_err(bad)
        }
        _ => {
            if dlr {
                carrier::generic_dlr(body).map(Event::Dlr).map_err(bad)
            } else {
                carrier::generic_mo(body).map(Event::Mo).map_err(bad)
            }
        }
    }
}

async fn handle_event(sms: &Sms, ev: Event) -> Result<Response, AppError> {
    match ev {
        Event::Mo(mo) => {
            let r = sms
                .inbound(Inbound {
                    from: mo.from,
                    to: mo.to,
                    text: mo.text,
                    carrier_message_id: Some(mo.carrier_id),
                })
                .await?;
            let code = if r.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((
                code,
                Json(json!({
                    "id": r.message.id,
                    "status": r.message.status,
                    "duplicate": r.duplicate,
                    "keyword": r.keyword.map(|k| format!("{k:?}").to_ascii_lowercase()),
                })),
            )
                .into_response())
        }
        Event::Dlr(d) => {
            sms.receipt(&d.carrier_id, d.status, d.error).await?;
            Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": true }))).into_response())
        }
        Event::Ignored(kind) => {
            Ok((StatusCode::OK, Json(json!({ "ignored": kind }))).into_response())
        }
    }
}

/// `POST /functions/v1/sms-webhook-mo`.
pub async fn webhook_mo(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let sms = gateway(&state)?;
    let ev = webhook_event(&state, sms, &uri, &headers, &body, false)?;
    handle_event(sms, ev).await
}

/// `POST /functions/v1/sms-webhook-dlr`.
pub async fn webhook_dlr(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let sms = gateway(&state)?;
    let ev = webhook_event(&state, sms, &uri, &headers, &body, true)?;
    handle_event(sms, ev).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    number: Option<String>,
    status: Option<String>,
    direction: Option<String>,
    conversation_id: Option<Uuid>,
    since: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

const STATUSES: [&str; 6] = [
    "queued",
    "sent",
    "delivered",
    "failed",
    "blocked",
    "received",
];

fn page(state: &AppState, limit: Option<u32>, offset: Option<u64>) -> Result<(u32, u64), AppError> {
    let api = &state.cfg.api;
    let limit = limit.unwrap_or(api.page_size);
    if limit == 0 || limit > api.max_page_size {
        return Err(AppError::BadRequest(format!(
            "limit must be 1..={}",
            api.max_page_size
        )));
    }
    let offset = offset.unwrap_or(0);
    if offset > 1_000_000_000 {
        return Err(AppError::BadRequest("offset must be 0..=1000000000".into()));
    }
    Ok((limit, offset))
}

fn number_param(v: Option<String>) -> Result<Option<String>, AppError> {
    match v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(n) if crate::domain::valid_e164(&n) => Ok(Some(n)),
        Some(_) => Err(AppError::coded(
            StatusCode::BAD_REQUEST,
            "invalid_number",
            "`number` must be an E.164 number such as +14155550123",
        )),
    }
}

/// `GET /api/v1/sms/messages`.
pub async fn list_messages(
    State(state): State<AppState>,
    _key: ApiKey,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = q.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let (limit, offset) = page(&state, q.limit, q.offset)?;
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(AppError::BadRequest(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    if let Some(d) = &q.direction
        && d != "inbound"
        && d != "outbound"
    {
        return Err(AppError::BadRequest(
            "direction must be inbound or outbound".into(),
        ));
    }
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| AppError::BadRequest("since must be an RFC 3339 time".into()))?
                .with_timezone(&chrono::Utc),
        ),
    };
    let f = SmsFilter {
        number: number_param(q.number)?,
        status: q.status,
        direction: q.direction,
        conversation_id: q.conversation_id,
        since,
        limit,
        offset,
    };
    let (list, total) = state.store.store.list_sms(&f).await?;
    let next = offset + list.len() as u64;
    Ok(Json(json!({
        "messages": list,
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": if (next as i64) < total { Some(next) } else { None },
    })))
}

/// `GET /api/v1/sms/messages/{id}`: the message with its parts and media.
pub async fn get_message(
    State(state): State<AppState>,
    _key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let id = Uuid::parse_str(&id).map_err(|_| AppError::BadRequest("bad message id".into()))?;
    let m = state
        .store
        .store
        .sms_message(&id)
        .await?
        .ok_or_else(|| AppError::NotFound("no such message".into()))?;
    let parts = state.store.store.sms_parts(&id).await?;
    let media = state.store.store.sms_media(&id).await?;
    let mut v = message_json(&m);
    v["parts"] = serde_json::to_value(parts).unwrap_or(Value::Null);
    v["media"] = serde_json::to_value(media).unwrap_or(Value::Null);
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvQuery {
    number: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

/// `GET /api/v1/sms/conversations`.
pub async fn list_conversations(
    State(state): State<AppState>,
    _key: ApiKey,
    q: Result<Query<ConvQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(q) = q.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let (limit, offset) = page(&state, q.limit, q.offset)?;
    let number = number_param(q.number)?;
    let (list, total) = state
        .store
        .store
        .list_sms_conversations(number.as_deref(), limit, offset)
        .await?;
    let next = offset + list.len() as u64;
    Ok(Json(json!({
        "conversations": list,
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": if (next as i64) < total { Some(next) } else { None },
    })))
}

#[derive(Deserialize)]
pub struct MediaQuery {
    exp: Option<i64>,
    sig: Option<String>,
}

/// `GET /sms-media/{*key}?exp=&sig=`: an MMS item for the carrier (signed, expiring link).
pub async fn media(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    Query(q): Query<MediaQuery>,
) -> Result<Response, AppError> {
    let sms = gateway(&state)?;
    let key = format!("sms-media/{rest}");
    let now = chrono::Utc::now().timestamp();
    let (Some(exp), Some(sig)) = (q.exp, q.sig) else {
        return Err(AppError::Unauthorized("a signed link is required".into()));
    };
    if !crate::sms::media::verify(sms.media_key(), &key, exp, &sig, now) {
        return Err(AppError::Unauthorized(
            "the link is not valid or has expired".into(),
        ));
    }
    if key.contains("..") || key.contains('\\') || key.contains("//") {
        return Err(AppError::NotFound("no such item".into()));
    }
    let path = sms.storage_root().join(&key);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| AppError::NotFound("no such item".into()))?;
    let kind = crate::sms::media::sniff(&bytes)
        .map(|k| k.mime)
        .unwrap_or("application/octet-stream");
    Ok((
        [
            ("content-type", kind),
            ("cache-control", "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}
