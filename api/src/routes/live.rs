//! `GET /api/v1/events/stream`: the tenant's event log as Server-Sent Events, live.
//!
//! Each event is sent with `id:` its number in the tenant's log, `event:` its kind (e.g.
//! `work_order.status_changed`) and `data:` `{"seq", "kind", "subject_id", "at", "payload"}`.
//! A client that reconnects with `Last-Event-ID` (or `?after=`) gets every event after that
//! number, in order: numbers are given in commit order ([`crate::events`]). Without either,
//! the stream starts with the next event. `?kinds=work_order.,part.low_stock` keeps the kinds
//! with one of the comma-separated prefixes.
//!
//! The stream reads the log every [`POLL`]; a comment line keeps idle connections open. It
//! ends when the server shuts down. Any role but requester (a requester sees only their own
//! work orders, the log is the whole tenant's); not for API keys.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{FromRow, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, FieldErrors};
use crate::permissions::Permission;

/// How often a stream reads the log for new events.
pub const POLL: Duration = Duration::from_millis(500);
/// Events read at once.
const PAGE: i64 = 500;

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct LoggedEvent {
    pub seq: i64,
    pub kind: String,
    pub subject_id: String,
    pub at: DateTime<Utc>,
    pub payload: Value,
}

/// A page of the tenant's events after `after`, oldest first, of the given kind prefixes.
pub async fn events_after(
    pool: &PgPool,
    tenant: Uuid,
    after: i64,
    kinds: &[String],
    limit: i64,
) -> Result<Vec<LoggedEvent>, sqlx::Error> {
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let events = sqlx::query_as::<_, LoggedEvent>(
        "SELECT seq, kind, subject_id, at, payload FROM events
         WHERE tenant_id = $1 AND seq > $2
           AND (cardinality($3::text[]) = 0 OR EXISTS (
                SELECT 1 FROM unnest($3::text[]) p WHERE starts_with(kind, p)))
         ORDER BY seq LIMIT $4",
    )
    .bind(tenant)
    .bind(after)
    .bind(kinds)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(events)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub after: Option<i64>,
    pub kinds: Option<String>,
}

/// Parses `?kinds=`: comma-separated prefixes of event kinds.
pub fn parse_kinds(text: Option<&str>, errors: &mut FieldErrors) -> Vec<String> {
    let Some(text) = text else {
        return Vec::new();
    };
    let kinds: Vec<String> = text
        .split(',')
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if kinds.len() > 20
        || kinds.iter().any(|k| {
            k.len() > 65
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
        })
    {
        errors.add(
            "kinds",
            "comma-separated prefixes of event kinds, e.g. work_order.,part.low_stock (at most 20)",
        );
    }
    kinds
}

struct Cursor {
    pool: PgPool,
    tenant: Uuid,
    after: i64,
    kinds: Vec<String>,
    ready: VecDeque<LoggedEvent>,
    closing: watch::Receiver<bool>,
    started: bool,
    _open: OpenStream,
}

/// Counts the stream in `maintainpro_api_event_streams` while it lives, however it ends.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics::gauge!("maintainpro_api_event_streams").increment(1.0);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("maintainpro_api_event_streams").decrement(1.0);
    }
}

pub async fn stream(
    State(state): State<AppState>,
    auth: AuthUser,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    auth.require(Permission::EventsRead)?;
    let mut errors = FieldErrors::default();
    let kinds = parse_kinds(q.kinds.as_deref(), &mut errors);
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => match text.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                errors.add("Last-Event-ID", "must be an event number this stream sent");
                None
            }
        },
        Some(Err(_)) => {
            errors.add("Last-Event-ID", "must be an event number this stream sent");
            None
        }
    };
    if q.after.is_some_and(|a| a < 0) {
        errors.add("after", "must be an event number (0 for every event)");
    }
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let after = match last_event_id.or(q.after) {
        Some(n) => n,
        None => {
            let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
            let last: Option<i64> =
                sqlx::query_scalar("SELECT max(seq) FROM events WHERE tenant_id = $1")
                    .bind(tenant)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            last.unwrap_or(0)
        }
    };
    let cursor = Cursor {
        pool: state.pool.clone(),
        tenant,
        after,
        kinds,
        ready: VecDeque::new(),
        closing: state.closing.clone(),
        started: false,
        _open: OpenStream::new(),
    };
    let events = futures_util::stream::unfold(cursor, next_event);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The next event of the stream: waits for one, reading the log every [`POLL`]; ends when the
/// server shuts down.
async fn next_event(mut c: Cursor) -> Option<(Result<Event, Infallible>, Cursor)> {
    loop {
        if let Some(e) = c.ready.pop_front() {
            c.after = e.seq;
            let data = serde_json::to_string(&e).unwrap_or_else(|_| "{}".to_owned());
            let event = Event::default()
                .id(e.seq.to_string())
                .event(e.kind.clone())
                .data(data);
            return Some((Ok(event), c));
        }
        if *c.closing.borrow() {
            return None;
        }
        if c.started {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = c.closing.changed() => continue,
            }
        }
        c.started = true;
        match events_after(&c.pool, c.tenant, c.after, &c.kinds, PAGE).await {
            Ok(events) => c.ready.extend(events),
            Err(e) => {
                tracing::warn!(error = %e, "reading the event log for a stream failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_prefixes_of_lower_case_names() {
        let mut errors = FieldErrors::default();
        assert_eq!(
            parse_kinds(Some("work_order., part.low_stock ,"), &mut errors),
            ["work_order.", "part.low_stock"]
        );
        assert!(errors.finish().is_ok());
        let mut errors = FieldErrors::default();
        parse_kinds(Some("Work_Order.*"), &mut errors);
        assert!(errors.finish().is_err());
    }
}
