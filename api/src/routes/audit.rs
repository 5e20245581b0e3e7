//! The audit log for a tenant's admins: query it, and export it.
//!
//! - `GET /api/v1/audit?since=&until=&action=&actor=&outcome=&target_type=&target_id=&limit=&before=`:
//!   newest first, at most `limit` (1-500, default 100) entries and a `next_cursor` to pass as
//!   `before` for the next page (`null` on the last page).
//! - `GET /api/v1/audit/export?format=ndjson|csv&since=&until=&...`: every matching entry,
//!   oldest first, streamed a page at a time (memory stays bounded whatever the range); the
//!   export itself is audited (`audit.export`).
//!
//! `since` and `until` are RFC 3339 times (`since` inclusive, `until` exclusive); `action`
//! matches exactly, or by prefix when it ends in `.*` (`auth.*`). Admins only; entries of
//! other tenants are invisible (row-level security), not merely filtered out.

use axum::Json;
use axum::body::{Body as HttpBody, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::api_keys::Scope;
use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::auth::Caller;
use crate::error::{ApiError, FieldErrors};
use crate::permissions::Permission;

/// Entries per page of an export.
const EXPORT_PAGE: i64 = 1000;

/// One audit entry as the API shows it.
#[derive(Debug, Serialize, FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_user: Option<Uuid>,
    pub action: String,
    pub outcome: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub detail: Value,
}

/// Filters shared by the query and the export.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub action: Option<String>,
    pub actor: Option<Uuid>,
    pub outcome: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
}

impl Filter {
    /// Every bad parameter at once, each on its field.
    fn check(&self, errors: &mut FieldErrors) {
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since >= until
        {
            errors.add("since", "must be before until");
        }
        if let Some(outcome) = &self.outcome
            && !["success", "failure", "denied"].contains(&outcome.as_str())
        {
            errors.add("outcome", "must be success, failure or denied");
        }
        if let Some(action) = &self.action {
            let name = action.strip_suffix(".*").unwrap_or(action);
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || "_.".contains(c))
            {
                errors.add(
                    "action",
                    "must be an action name such as auth.login, or a prefix such as auth.*",
                );
            }
        }
        for (name, value) in [
            ("target_type", &self.target_type),
            ("target_id", &self.target_id),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > 200) {
                errors.add(name, "must be at most 200 characters");
            }
        }
    }

    /// Appends ` AND ...` conditions for the filter to a query that has a `WHERE`.
    fn push(&self, q: &mut QueryBuilder<'_, Postgres>) {
        if let Some(since) = self.since {
            q.push(" AND at >= ").push_bind(since);
        }
        if let Some(until) = self.until {
            q.push(" AND at < ").push_bind(until);
        }
        if let Some(action) = &self.action {
            match action.strip_suffix(".*") {
                // Action names hold no LIKE wildcards (`_` aside, escaped here).
                Some(prefix) => q
                    .push(" AND action LIKE ")
                    .push_bind(format!("{}.%", prefix.replace('_', "\\_"))),
                None => q.push(" AND action = ").push_bind(action.clone()),
            };
        }
        if let Some(actor) = self.actor {
            q.push(" AND actor_user = ").push_bind(actor);
        }
        if let Some(outcome) = &self.outcome {
            q.push(" AND outcome = ").push_bind(outcome.clone());
        }
        if let Some(kind) = &self.target_type {
            q.push(" AND target_type = ").push_bind(kind.clone());
        }
        if let Some(id) = &self.target_id {
            q.push(" AND target_id = ").push_bind(id.clone());
        }
    }
}

const COLUMNS: &str =
    "SELECT id, at, actor_user, action, outcome, target_type, target_id, request_id, ip, detail
     FROM audit_log WHERE tenant_id = ";

/// The query string of both endpoints: the filter, and what applies to one of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub action: Option<String>,
    pub actor: Option<Uuid>,
    pub outcome: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// The list only.
    pub limit: Option<i64>,
    /// The list only: the `next_cursor` of the previous page.
    pub before: Option<i64>,
    /// The export only.
    pub format: Option<Format>,
}

impl Params {
    /// The filter, with every problem of the parameters (those `errors` holds already, and
    /// the filter's own) refused at once.
    fn filter(self, mut errors: FieldErrors) -> Result<Filter, ApiError> {
        let filter = Filter {
            since: self.since,
            until: self.until,
            action: self.action,
            actor: self.actor,
            outcome: self.outcome,
            target_type: self.target_type,
            target_id: self.target_id,
        };
        filter.check(&mut errors);
        errors.finish()?;
        Ok(filter)
    }
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<Params>,
) -> Result<Json<Page>, ApiError> {
    let auth = caller.require_scope(Scope::AuditRead, Permission::AuditRead)?;
    let mut errors = FieldErrors::default();
    if q.format.is_some() {
        errors.add("format", "applies to /api/v1/audit/export");
    }
    let (limit, before) = (q.limit.unwrap_or(100), q.before);
    if !(1..=500).contains(&limit) {
        errors.add("limit", "must be between 1 and 500");
    }
    let filter = q.filter(errors)?;
    let tenant = auth.tenant.as_uuid();
    let mut query = QueryBuilder::new(COLUMNS);
    query.push_bind(tenant);
    filter.push(&mut query);
    let (items, next_cursor) = super::newest_by_id(
        &state.pool,
        tenant,
        query,
        before,
        limit,
        |e: &AuditEntry| e.id,
    )
    .await?;
    Ok(Json(Page { items, next_cursor }))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Ndjson,
    Csv,
}

pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    Query(q): Query<Params>,
) -> Result<Response, ApiError> {
    let auth = caller.require_scope(Scope::AuditRead, Permission::AuditRead)?;
    let mut errors = FieldErrors::default();
    for (field, given) in [("limit", q.limit.is_some()), ("before", q.before.is_some())] {
        if given {
            errors.add(
                field,
                "applies to /api/v1/audit; an export has every matching entry",
            );
        }
    }
    let format = q.format.unwrap_or_default();
    let filter = q.filter(errors)?;
    let tenant = auth.tenant.as_uuid();
    audit::record(
        &state.pool,
        Entry::new(Some(tenant), Some(auth.user), "audit.export", Outcome::Success).detail(
            json!({ "format": format, "filter": serde_json::to_value(&filter).unwrap_or_default() }),
        ),
        &meta,
    )
    .await;
    let (content_type, file) = match format {
        Format::Ndjson => ("application/x-ndjson", "audit.ndjson"),
        Format::Csv => ("text/csv; charset=utf-8", "audit.csv"),
    };
    let pages = Pages {
        pool: state.pool.clone(),
        tenant,
        filter,
        format,
        after: 0,
        header_sent: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(pages, |mut pages| async move {
        let chunk = pages.next().await.transpose()?;
        Some((chunk, pages))
    });
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        HttpBody::from_stream(stream),
    )
        .into_response())
}

/// The export's pages, oldest first, each read in a transaction of its own.
struct Pages {
    pool: PgPool,
    tenant: Uuid,
    filter: Filter,
    format: Format,
    /// The id of the last entry sent.
    after: i64,
    header_sent: bool,
    done: bool,
}

impl Pages {
    /// The next chunk of the body; `None` at the end.
    async fn next(&mut self) -> Result<Option<Bytes>, std::io::Error> {
        if self.done {
            return Ok(None);
        }
        let mut out = Vec::new();
        if self.format == Format::Csv && !self.header_sent {
            self.header_sent = true;
            out.extend_from_slice(CSV_HEADER.as_bytes());
        }
        let entries = self.fetch().await.map_err(|e| {
            // The status line is gone: cutting the body short is all that is left.
            tracing::error!(error = %e, "audit export stopped");
            std::io::Error::other("audit export stopped")
        })?;
        if (entries.len() as i64) < EXPORT_PAGE {
            self.done = true;
        }
        if let Some(last) = entries.last() {
            self.after = last.id;
        }
        for entry in &entries {
            match self.format {
                Format::Ndjson => {
                    serde_json::to_writer(&mut out, entry).map_err(std::io::Error::other)?;
                    out.push(b'\n');
                }
                Format::Csv => csv_row(&mut out, entry),
            }
        }
        Ok(Some(Bytes::from(out)))
    }

    async fn fetch(&self) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let mut query = QueryBuilder::new(COLUMNS);
        query.push_bind(self.tenant);
        self.filter.push(&mut query);
        query.push(" AND id > ").push_bind(self.after);
        query.push(" ORDER BY id LIMIT ").push_bind(EXPORT_PAGE);
        let mut tx = migrations::begin_tenant(&self.pool, self.tenant).await?;
        let entries = query.build_query_as().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(entries)
    }
}

const CSV_HEADER: &str =
    "id,at,actor_user,action,outcome,target_type,target_id,request_id,ip,detail\r\n";

/// One CSV record (RFC 4180: fields quoted, quotes doubled, CRLF line ends). A field that a
/// spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, tab or CR) is
/// prefixed with `'`, so that opening an export cannot run what a user typed.
fn csv_row(out: &mut Vec<u8>, e: &AuditEntry) {
    let fields = [
        e.id.to_string(),
        e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        e.actor_user.map(|u| u.to_string()).unwrap_or_default(),
        e.action.clone(),
        e.outcome.clone(),
        e.target_type.clone().unwrap_or_default(),
        e.target_id.clone().unwrap_or_default(),
        e.request_id.clone().unwrap_or_default(),
        e.ip.clone().unwrap_or_default(),
        e.detail.to_string(),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        if field.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            out.push(b'\'');
        }
        out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(target_id: &str, detail: Value) -> AuditEntry {
        AuditEntry {
            id: 7,
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            actor_user: None,
            action: "auth.login".into(),
            outcome: "failure".into(),
            target_type: Some("user".into()),
            target_id: Some(target_id.into()),
            request_id: None,
            ip: Some("127.0.0.1".into()),
            detail,
        }
    }

    #[test]
    fn csv_quotes_every_field_and_defuses_formulas() {
        let mut out = Vec::new();
        csv_row(
            &mut out,
            &entry("=HYPERLINK(\"x\")", json!({"email": "a,b"})),
        );
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "\"7\",\"2023-11-14T22:13:20.000000Z\",\"\",\"auth.login\",\"failure\",\"user\",\"'=HYPERLINK(\"\"x\"\")\",\"\",\"127.0.0.1\",\"{\"\"email\"\":\"\"a,b\"\"}\"\r\n"
        );
    }

    #[test]
    fn filters_are_checked() {
        let ok = Filter {
            action: Some("auth.*".into()),
            ..Filter::default()
        };
        let mut errors = FieldErrors::default();
        ok.check(&mut errors);
        assert!(errors.finish().is_ok());
        for bad in [
            Filter {
                action: Some("DROP TABLE".into()),
                ..Filter::default()
            },
            Filter {
                outcome: Some("maybe".into()),
                ..Filter::default()
            },
            Filter {
                since: Some(DateTime::from_timestamp(2, 0).unwrap()),
                until: Some(DateTime::from_timestamp(1, 0).unwrap()),
                ..Filter::default()
            },
        ] {
            let mut errors = FieldErrors::default();
            bad.check(&mut errors);
            assert!(errors.finish().is_err(), "{bad:?}");
        }
    }
}
