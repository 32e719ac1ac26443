//! The demo page and the JS client, compiled into the binary (no front-end build step).

use axum::http::header;
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const CLIENT_JS: &str = include_str!("../../static/commhub.js");

pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}

pub async fn client_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
}

pub async fn not_found() -> impl IntoResponse {
    crate::http::AppError::NotFound("no such route".into()).into_response()
}
