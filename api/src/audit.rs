//! The append-only audit log: who did what, when, in which tenant, from where.
//!
//! Rows go to `audit_log`, which the application role may insert into and read (its own
//! tenant's rows) but never update or delete. An entry is written in the transaction of the
//! change it records when there is one, so that a rolled-back change leaves no entry; failed
//! and refused attempts are written on their own.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// What happened to the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// The client's address, as resolved for the request (the peer, or the forwarded address when
/// the peer is a trusted proxy). Put into the request's extensions by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

/// Where a request came from, as the audit log records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub request_id: Option<String>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str, max: usize| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(max).collect::<String>())
        };
        let ip = match parts.extensions.get::<ClientIp>() {
            Some(ip) => Some(ip.0.to_string()),
            None => parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
        };
        Ok(RequestMeta {
            ip,
            request_id: header("x-request-id", 100),
            user_agent: header("user-agent", 500),
        })
    }
}

/// One audit entry.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// `None` only when the request named no known tenant.
    pub tenant: Option<Uuid>,
    pub actor: Option<Uuid>,
    /// Dotted lower-case name, e.g. `auth.login`, `session.revoke`, `alarm.shelve`.
    pub action: &'a str,
    pub outcome: Outcome,
    pub target: Option<(&'a str, String)>,
    pub detail: Value,
}

impl<'a> Entry<'a> {
    pub fn new(
        tenant: Option<Uuid>,
        actor: Option<Uuid>,
        action: &'a str,
        outcome: Outcome,
    ) -> Self {
        Self {
            tenant,
            actor,
            action,
            outcome,
            target: None,
            detail: Value::Object(Default::default()),
        }
    }

    pub fn target(mut self, kind: &'a str, id: impl ToString) -> Self {
        self.target = Some((kind, id.to_string()));
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Writes `entry` on a connection whose transaction has set the entry's tenant (or none).
pub async fn write(
    conn: &mut PgConnection,
    entry: &Entry<'_>,
    meta: &RequestMeta,
) -> Result<(), sqlx::Error> {
    let (target_type, target_id) = match &entry.target {
        Some((kind, id)) => (Some(*kind), Some(id.as_str())),
        None => (None, None),
    };
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, actor_user, action, outcome, target_type, target_id,
                                request_id, ip, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(entry.tenant)
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.outcome.as_str())
    .bind(target_type)
    .bind(target_id)
    .bind(meta.request_id.as_deref())
    .bind(meta.ip.as_deref())
    .bind(&entry.detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes the audit entry of a caller's successful change to `target` (kind, id), in the
/// change's transaction; an API key acting for its creator is named in the detail.
pub async fn write_change(
    conn: &mut PgConnection,
    auth: &crate::auth::AuthUser,
    meta: &RequestMeta,
    action: &str,
    target: (&str, impl ToString),
    mut detail: Value,
) -> Result<(), sqlx::Error> {
    if let crate::auth::Principal::ApiKey { id: key, .. } = auth.principal {
        detail["api_key"] = key.to_string().into();
    }
    let entry = Entry::new(
        Some(auth.tenant.as_uuid()),
        Some(auth.user),
        action,
        Outcome::Success,
    )
    .target(target.0, target.1)
    .detail(detail);
    write(conn, &entry, meta).await
}

/// Writes `entry` in a transaction of its own. An audit entry that cannot be written is
/// logged as an error: the request it records has already been answered or refused.
pub async fn record(pool: &PgPool, entry: Entry<'_>, meta: &RequestMeta) {
    let result = async {
        let mut tx = match entry.tenant {
            Some(t) => migrations::begin_tenant(pool, t).await?,
            None => pool.begin().await?,
        };
        write(&mut tx, &entry, meta).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, action = entry.action, "cannot write the audit log");
    }
}
