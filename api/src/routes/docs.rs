//! The API's own description: the OpenAPI document and the page that renders it, neither
//! behind authentication (they describe the API, they hold no tenant's data).
//!
//! - `GET /api/v1/openapi.json`
//! - `GET /api/v1/docs`, `/api/v1/docs/docs.js`, `/api/v1/docs/docs.css`

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::openapi;

/// The document, serialised once.
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    openapi::document()
        .map(|doc| Bytes::from(doc.to_string()))
        .map_err(|e| e.to_string())
});

pub async fn document() -> Result<Response, ApiError> {
    match &*DOCUMENT {
        Ok(text) => Ok(asset(text.clone(), "application/json")),
        Err(e) => Err(ApiError::Internal(anyhow::anyhow!(
            "the embedded OpenAPI document: {e}"
        ))),
    }
}

pub async fn page() -> Response {
    asset(
        Bytes::from_static(openapi::DOCS_HTML.as_bytes()),
        "text/html; charset=utf-8",
    )
}

pub async fn script() -> Response {
    asset(
        Bytes::from_static(openapi::DOCS_JS.as_bytes()),
        "text/javascript; charset=utf-8",
    )
}

pub async fn style() -> Response {
    asset(
        Bytes::from_static(openapi::DOCS_CSS.as_bytes()),
        "text/css; charset=utf-8",
    )
}

/// An embedded file: the same for everyone until the next release, so caches may keep it
/// for a while; the page's policy lets it load its own script, style and document only.
fn asset(body: Bytes, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(openapi::DOCS_CSP),
            ),
        ],
        body,
    )
        .into_response()
}
