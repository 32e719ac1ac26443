//! Credentials as extractors: a handler that takes [`ApiKey`] runs only for a request with a
//! valid API key (`auth.api_keys`, `Authorization: Bearer <key>`); one that takes [`PbxToken`]
//! only for the PBX (`auth.pbx_token`, PBX_AUTH_TOKEN). Refusals are the one error type.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{AppError, AppState};
use crate::auth::{bearer, secret_matches};

/// The request carries a valid API key (or auth is off, or dev mode).
#[derive(Debug, Clone, Copy)]
pub struct ApiKey;

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        check_api_key(state, &parts.headers).map(|()| ApiKey)
    }
}

/// Check an API key without the extractor (for handlers that decide late).
pub fn check_api_key(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), AppError> {
    let a = &state.cfg.auth;
    if !a.enabled || a.dev_mode {
        return Ok(());
    }
    let Some(key) = bearer(headers) else {
        return Err(AppError::Unauthorized(
            "an API key is required: Authorization: Bearer <key>".into(),
        ));
    };
    // Compare with every key (no early exit), constant-time each.
    let ok = a
        .api_keys
        .iter()
        .fold(false, |ok, k| secret_matches(key, k) | ok);
    if ok {
        Ok(())
    } else {
        Err(AppError::Unauthorized("the API key is not valid".into()))
    }
}

/// The request carries the PBX's token (recording-upload). Checked before the body is read.
#[derive(Debug, Clone, Copy)]
pub struct PbxToken;

impl FromRequestParts<AppState> for PbxToken {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = bearer(&parts.headers).unwrap_or("");
        if secret_matches(token, &state.cfg.auth.pbx_token) {
            Ok(PbxToken)
        } else {
            Err(AppError::Unauthorized(
                "a valid PBX token is required: Authorization: Bearer PBX_AUTH_TOKEN".into(),
            ))
        }
    }
}
