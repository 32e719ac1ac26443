//! WHIP (RFC 9725) publish and WHEP subscribe: one HTTP exchange of complete SDP offer and
//! answer per session, a resource URL per session, DELETE to end it. Trickle (PATCH) is not
//! supported: the answers carry every server candidate.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use media::SfuError;
use serde::Deserialize;
use signaling::{Role, validate_room_name};

use crate::http::AppError;
use crate::http::AppState;

#[derive(Debug, Deserialize)]
pub struct WhipQuery {
    pub name: Option<String>,
    pub role: Option<String>,
}

fn sdp_body(state: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<String, AppError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/sdp")
    {
        return Err(AppError::UnsupportedMediaType(
            "the body must be an SDP offer with Content-Type: application/sdp".into(),
        ));
    }
    if body.len() > state.cfg.server.max_body_bytes {
        return Err(AppError::TooLarge(format!(
            "the offer is {} bytes; the limit is {}",
            body.len(),
            state.cfg.server.max_body_bytes
        )));
    }
    let sdp = std::str::from_utf8(body)
        .map_err(|_| AppError::BadSdp("the offer is not UTF-8 text".into()))?;
    if !sdp.trim_start().starts_with("v=") {
        return Err(AppError::BadSdp(
            "the offer does not start with a `v=` line".into(),
        ));
    }
    Ok(sdp.to_string())
}

/// WHIP/WHEP carry the join token as `Authorization: Bearer` (RFC 9725 section 4.5).
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
) -> Result<Option<crate::auth::Claims>, AppError> {
    if !state.cfg.auth.enabled {
        return Ok(None);
    }
    let res = match crate::auth::bearer(headers) {
        None => Err(crate::auth::TokenError::Missing),
        Some(t) => state.tokens.verify(t).and_then(|c| c.for_room(room)),
    };
    res.map(Some)
        .map_err(|e| AppError::Unauthorized(format!("{}: {e}", e.code())))
}

fn room_ok(room: &str) -> Result<(), AppError> {
    validate_room_name(room).map_err(|e| AppError::BadRequest(e.message))
}

fn map_sfu(e: SfuError) -> AppError {
    match e {
        SfuError::BadSdp(m) => AppError::BadSdp(m),
        SfuError::NotFound(m) => AppError::NotFound(m),
        SfuError::Room(r) => AppError::Conflict(r.to_string()),
        SfuError::ShuttingDown => AppError::Unavailable("the server is shutting down".into()),
        SfuError::Peer(media::PeerError::NoPorts) => {
            AppError::Unavailable("no media ports available".into())
        }
        other => AppError::Internal(anyhow::anyhow!(other.to_string())),
    }
}

fn created(location: String, answer: String) -> Response {
    let mut resp = (StatusCode::CREATED, answer).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    resp
}

pub async fn whip_post(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(q): Query<WhipQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    room_ok(&room)?;
    let claims = authorize(&state, &headers, &room)?;
    let offer = sdp_body(&state, &headers, &body)?;
    let role: Option<Role> = match q.role.as_deref() {
        None => None,
        Some(r) => Some(
            serde_json::from_value(serde_json::Value::String(r.to_string()))
                .ok()
                .filter(|r| *r != Role::System)
                .ok_or_else(|| AppError::BadRequest(format!("unknown role `{r}`")))?,
        ),
    };
    let name = q
        .name
        .map(|n| n.trim().chars().take(64).collect::<String>())
        .filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
        .unwrap_or_else(|| "WHIP".to_string());
    let role = match &claims {
        Some(c) => c.role.clone(),
        None => role.map(|r| r.as_str().to_string()).unwrap_or_default(),
    };
    let token_call = claims.as_ref().and_then(|c| c.call());
    if state.calls.admit(&room, token_call, None).await.is_err() {
        return Err(AppError::coded(
            StatusCode::CONFLICT,
            "call_ended",
            "this call has ended",
        ));
    }
    let (id, answer) = state
        .sfu
        .whip_publish(&room, name.clone(), role.clone(), offer)
        .await
        .map_err(map_sfu)?;
    state
        .calls
        .joined(
            &room,
            crate::calls::Joining::new(
                &id,
                media::ParticipantKind::Whip,
                &role,
                &name,
                claims.map(|c| c.sub),
            ),
        )
        .await;
    Ok(created(format!("/whip/{room}/{id}"), answer))
}

pub async fn whip_delete(
    State(state): State<AppState>,
    Path((_room, participant)): Path<(String, String)>,
) -> Result<StatusCode, AppError> {
    if state.sfu.end_resource(&participant) {
        Ok(StatusCode::OK)
    } else {
        Err(AppError::NotFound("no such WHIP session".into()))
    }
}

pub async fn whep_post(
    State(state): State<AppState>,
    Path((room, participant)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    room_ok(&room)?;
    authorize(&state, &headers, &room)?;
    let offer = sdp_body(&state, &headers, &body)?;
    let (sub, answer) = state
        .sfu
        .whep_subscribe(&room, &participant, offer)
        .await
        .map_err(map_sfu)?;
    Ok(created(format!("/whep/{room}/{participant}/{sub}"), answer))
}

pub async fn whep_delete(
    State(state): State<AppState>,
    Path((_room, _participant, subscriber)): Path<(String, String, String)>,
) -> Result<StatusCode, AppError> {
    if state.sfu.end_resource(&subscriber) {
        Ok(StatusCode::OK)
    } else {
        Err(AppError::NotFound("no such WHEP session".into()))
    }
}

/// PATCH (trickle ICE / ICE restart) is not supported: 405 as RFC 9725 asks.
pub async fn not_supported() -> Response {
    let mut r = (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({"error": {"code": "method_not_allowed",
            "message": "trickle ICE and ICE restarts are not supported; the answer carries every candidate"}})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("DELETE"));
    r
}
