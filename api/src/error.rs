//! The HTTP boundary's error: one JSON shape everywhere, internal details only in the log.
//!
//! Every error response carries `{"error": {"code", "message", "request_id"}}`, and a
//! request refused for its fields also `"details": [{"field", "message"}, ...]`, one per
//! problem, all of them at once ([`ApiError::Invalid`]). Handlers
//! answer with an [`ApiError`]; responses made elsewhere (unknown routes, wrong methods,
//! rejected bodies) are given the same shape from their status by [`crate::protect`], which
//! also adds the request id to both.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthenticated,
    #[error("invalid credentials")]
    BadCredentials,
    #[error("your role may not do this")]
    Forbidden,
    /// An API key without the scope the endpoint names.
    #[error(
        "this API key does not have the scope {0}, which this endpoint needs: an admin can create a key with it (POST /api/v1/api-keys)"
    )]
    MissingScope(&'static str),
    /// An API key on an endpoint that names no scope: only a signed-in user may call it.
    #[error("API keys cannot call this endpoint: sign in as a user (POST /api/v1/auth/login)")]
    UserOnly,
    /// Refused by a rule of the organisation, which the message names.
    #[error("{0}")]
    ForbiddenByPolicy(String),
    /// A second factor that is wrong, already used, or missing where the account has MFA.
    #[error(
        "the MFA code is wrong or was already used: enter the current 6-digit code of your authenticator app (a code counts once), or an unused recovery code"
    )]
    BadMfaCode,
    /// The request does not fit the resource's current state; the message says what to do.
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    /// Fields that are wrong, each with what is wrong with it; never empty.
    #[error("{}", invalid_message(.0))]
    Invalid(Vec<FieldError>),
    #[error("request body too large")]
    PayloadTooLarge,
    /// A body of a type the endpoint does not take; the message names the types it does.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many requests; retry later")]
    RateLimited { retry_after: Duration },
    /// A feature this server is not set up for (e.g. mail without `[api.smtp]`).
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A request refused for one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError::new(field, message)])
    }

    /// A unique violation of the database (two requests racing past the same check) as the
    /// refusal of `field` the check would have given; any other error as it is.
    pub fn unique(e: sqlx::Error, field: &str, message: &str) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                ApiError::field(field, message)
            }
            _ => e.into(),
        }
    }

    /// Several refusals of one field (e.g. every rule of the password policy it breaks).
    pub fn field_each<M: ToString>(field: &str, messages: impl IntoIterator<Item = M>) -> Self {
        ApiError::Invalid(
            messages
                .into_iter()
                .map(|m| FieldError::new(field, m.to_string()))
                .collect(),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // Text PostgreSQL cannot hold is the request's fault, wherever it came in (a body, a
        // query string): the NUL character, which JSON carries as \u0000 but a PostgreSQL
        // text value cannot.
        if let sqlx::Error::Database(db) = &e
            && db.code().is_some_and(|code| is_bad_text(&code))
        {
            return bad_text();
        }
        ApiError::Internal(e.into())
    }
}

/// Whether SQLSTATE `code` is `untranslatable_character` or `character_not_in_repertoire`:
/// what PostgreSQL answers for a NUL character in text.
pub(crate) fn is_bad_text(code: &str) -> bool {
    matches!(code, "22P05" | "22021")
}

/// The answer to text PostgreSQL cannot hold.
pub(crate) fn bad_text() -> ApiError {
    ApiError::BadRequest("text must not contain the NUL character (\\u0000)".to_owned())
}

/// One field of a request that is wrong: its name as the request spells it (a dotted path
/// inside a body, e.g. `checklist.2`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Collects a request's field problems, to report all at once.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

/// The longest search text (`q`) a list takes, in characters.
pub const MAX_SEARCH_CHARS: usize = 200;

impl FieldErrors {
    /// Refuses a list's search text (`q`) longer than [`MAX_SEARCH_CHARS`].
    pub fn check_search(&mut self, q: Option<&str>) {
        if q.is_some_and(|t| t.chars().count() > MAX_SEARCH_CHARS) {
            self.add(
                "q",
                format!("must be at most {MAX_SEARCH_CHARS} characters"),
            );
        }
    }

    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// The fields reported so far, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|e| e.field.as_str())
    }

    /// `Ok` when nothing was added, else [`ApiError::Invalid`] with every problem.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.0))
        }
    }
}

fn invalid_message(errors: &[FieldError]) -> String {
    let fields: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    fields.join("; ")
}

/// What an error response says. [`ApiError`] leaves it in the response's extensions so that
/// the protection layer can render it again with the request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    /// The fields at fault, for [`ApiError::Invalid`].
    pub details: Vec<FieldError>,
}

impl ErrorBody {
    /// The body of an error response that was made without one (or with another layer's
    /// plain text, which is never passed on): a fixed code and message per status.
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                ("bad_request", "the request is not valid for this endpoint")
            }
            StatusCode::UNAUTHORIZED => ("unauthenticated", "authentication required"),
            StatusCode::FORBIDDEN => ("forbidden", "your role may not do this"),
            StatusCode::NOT_FOUND => ("not_found", "not found"),
            StatusCode::CONFLICT => (
                "conflict",
                "the request conflicts with the resource's current state",
            ),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this method is not allowed on this resource",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "send the body as application/json",
            ),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "too many requests; retry later"),
            s if s.is_client_error() => ("bad_request", "the request cannot be served"),
            _ => ("internal", "internal error"),
        };
        Self {
            code,
            message: message.to_owned(),
            details: Vec::new(),
        }
    }

    /// The JSON of the body; `request_id` is left out only where no request is known.
    pub fn to_json(&self, request_id: Option<&str>) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if !self.details.is_empty() {
            error["details"] = json!(self.details);
        }
        if let Some(id) = request_id {
            error["request_id"] = Value::from(id);
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::BadCredentials => (StatusCode::UNAUTHORIZED, "bad_credentials"),
            ApiError::Forbidden
            | ApiError::ForbiddenByPolicy(_)
            | ApiError::MissingScope(_)
            | ApiError::UserOnly => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadMfaCode => (StatusCode::UNAUTHORIZED, "bad_mfa_code"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let body = ErrorBody {
            code,
            message: self.to_string(),
            details: match &self {
                ApiError::Invalid(details) => details.clone(),
                _ => Vec::new(),
            },
        };
        let mut response = (status, Json(body.to_json(None))).into_response();
        response.extensions_mut().insert(body);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::RateLimited { retry_after } = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after)),
            );
        }
        response
    }
}

/// A JSON request body whose problems (malformed JSON, unknown or missing fields, wrong
/// content type) answer in the API's one error shape, naming what was wrong.
#[derive(Debug, Clone, Copy, Default)]
pub struct Body<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON, sent with Content-Type: application/json".to_owned(),
            ));
        }
        let bytes = read_body(req, state).await?;
        decode_body(&bytes).map(Body)
    }
}

/// A JSON body that may be left out: without a `Content-Type` there is none; with one, it is
/// read as [`Body`] reads it.
impl<T, S> axum::extract::OptionalFromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if !req.headers().contains_key(header::CONTENT_TYPE) {
            return Ok(None);
        }
        <Self as axum::extract::FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

/// `application/json`, or an `application/...+json` type, with any parameters.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn read_body<S: Send + Sync>(
    req: axum::extract::Request,
    state: &S,
) -> Result<axum::body::Bytes, ApiError> {
    use axum::extract::FromRequest;
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest(rejection.body_text())
            }
        })
}

/// Reads a JSON body. JSON that does not parse is a `bad_request`; a value of the wrong type,
/// a missing or unknown field is an `invalid` answer naming the field in `details`, with the
/// dotted path the API's own checks use (`checklist.2`).
fn decode_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let field = dotted(e.path());
        let inner = e.into_inner();
        // serde_json appends the position; the field says where.
        let text = inner.to_string();
        let message = text
            .rfind(" at line ")
            .map_or(text.as_str(), |at| &text[..at])
            .to_owned();
        if inner.is_data() {
            ApiError::field(if field.is_empty() { "body" } else { &field }, message)
        } else {
            ApiError::BadRequest(format!("the body is not valid JSON: {text}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// `checklist[2].text` as the API names fields: `checklist.2.text`; `""` for the whole body.
fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let parts: Vec<String> = path
        .iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect();
    parts.join(".")
}

/// For a field of a `PATCH` body (`#[serde(default, deserialize_with = "present")]` on an
/// `Option<Option<T>>`): left out is `None`, `null` is `Some(None)`, a value `Some(Some(v))`.
pub fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Whole seconds to wait, rounded up, and at least 1: `Retry-After: 0` would invite an
/// immediate retry that is refused again.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_text_is_at_most_200_characters() {
        for (q, ok) in [
            (None, true),
            (Some(String::new()), true),
            (Some("é".repeat(200)), true),
            (Some("x".repeat(201)), false),
        ] {
            let mut errors = FieldErrors::default();
            errors.check_search(q.as_deref());
            match errors.finish() {
                Ok(()) => assert!(ok, "{q:?}"),
                Err(ApiError::Invalid(fields)) => {
                    assert!(!ok, "{q:?}");
                    assert_eq!(fields[0].field, "q");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        for (wait, secs) in [
            (Duration::ZERO, 1),
            (Duration::from_millis(1), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(3600), 3600),
        ] {
            assert_eq!(retry_after_secs(wait), secs, "{wait:?}");
        }
    }

    #[test]
    fn rate_limited_answers_429_with_retry_after() {
        let response = ApiError::RateLimited {
            retry_after: Duration::from_millis(5500),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "6");
        let body = response
            .extensions()
            .get::<ErrorBody>()
            .expect("set by into_response");
        assert_eq!(body.code, "rate_limited");
    }

    #[test]
    fn invalid_fields_are_listed_in_the_body_and_the_message() {
        let mut errors = FieldErrors::default();
        errors.add("title", "must not be empty");
        errors.add("priority", "must be low, medium, high or critical");
        let response = errors.finish().unwrap_err().into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = response
            .extensions()
            .get::<ErrorBody>()
            .expect("set")
            .to_json(Some("r"));
        assert_eq!(body["error"]["code"], "invalid");
        assert_eq!(body["error"]["details"][1]["field"], "priority");
        assert_eq!(
            body["error"]["message"],
            "title: must not be empty; priority: must be low, medium, high or critical"
        );
        assert!(FieldErrors::default().finish().is_ok());
    }

    #[test]
    fn layer_errors_never_pass_on_their_text() {
        for status in [
            StatusCode::NOT_FOUND,
            StatusCode::METHOD_NOT_ALLOWED,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::IM_A_TEAPOT,
            StatusCode::BAD_GATEWAY,
        ] {
            let body = ErrorBody::for_status(status).to_json(Some("r-1"));
            assert_eq!(body["error"]["request_id"], "r-1");
            assert!(body["error"]["code"].is_string(), "{status}");
        }
        assert_eq!(
            ErrorBody::for_status(StatusCode::BAD_GATEWAY).code,
            "internal"
        );
    }
}
