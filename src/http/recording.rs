//! `POST /api/v1/rooms/{room}/recording` `{"enabled": bool}` switches a room's recording;
//! `GET` tells whether it is on. Like all of /api/v1 it needs the API key.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppError;
use crate::http::AppState;
use crate::http::extract::ApiKey;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRecording {
    pub enabled: bool,
}

pub async fn set_recording(
    State(state): State<AppState>,
    _key: ApiKey,
    Path(room): Path<String>,
    body: Result<Json<SetRecording>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let Json(body) = body.map_err(|e| AppError::BadRequest(e.body_text()))?;
    signaling::validate_room_name(&room).map_err(|e| AppError::BadRequest(e.message))?;
    let open = state.sfu.participants(&room).is_some();
    // An open room switches now; a room that is not open keeps the choice for when it opens.
    let running = state.calls.set_recording(&room, body.enabled).await;
    if !open {
        return Ok(Json(
            json!({"room": room, "open": false, "recording": body.enabled}),
        ));
    }
    if body.enabled && running.is_none() {
        return Err(AppError::Unavailable("recording: it did not start".into()));
    }
    Ok(Json(json!({
        "room": room,
        "open": true,
        "recording": running.is_some(),
        "recording_id": running.map(|r| r.to_string()),
    })))
}

pub async fn get_recording(
    State(state): State<AppState>,
    _key: ApiKey,
    Path(room): Path<String>,
) -> Result<Json<Value>, AppError> {
    let open = state.sfu.participants(&room).is_some();
    if !open {
        return Err(AppError::NotFound(format!("no open room `{room}`")));
    }
    Ok(Json(json!({
        "room": room,
        "open": true,
        "recording": state.recorders.active(&room).is_some(),
        "recording_id": state.recorders.active(&room),
    })))
}
