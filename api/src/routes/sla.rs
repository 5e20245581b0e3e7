//! Service levels: how long a work order of each priority may take before it is overdue.
//!
//! - `GET /api/v1/sla-policies`: the four priorities, most urgent first, each with
//!   `resolve_within` (humantime, e.g. `4h`) and whether it is the default.
//! - `PUT /api/v1/sla-policies` `{"policies": [{"priority": "high", "resolve_within": "12h"},
//!   {"priority": "low", "resolve_within": null}]}`: sets the listed priorities (`null` goes
//!   back to the default), admins only, all or none; audited (`organisation.sla_policies`).
//!
//! Defaults (when a priority has no row): critical 4h, high 1 day, medium 3 days, low 7 days,
//! as the trigger `work_orders_sla_due` applies them. A change applies to work orders created
//! or re-prioritised from then on; existing due dates stay.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body, FieldErrors};
use crate::permissions::Permission;

/// Most urgent first, with the defaults of `work_orders_sla_due`.
const DEFAULTS: [(&str, u64); 4] = [
    ("critical", 4 * 3600),
    ("high", 86_400),
    ("medium", 3 * 86_400),
    ("low", 7 * 86_400),
];
const LONGEST: Duration = Duration::from_secs(366 * 86_400);

#[derive(Debug, Serialize)]
pub struct SlaPolicy {
    pub priority: &'static str,
    #[serde(with = "humantime_serde")]
    pub resolve_within: Duration,
    /// No row for this priority: the built-in default applies.
    pub default: bool,
}

#[derive(Debug, Serialize)]
pub struct SlaPolicies {
    pub items: Vec<SlaPolicy>,
}

async fn read(conn: &mut PgConnection, tenant: Uuid) -> Result<SlaPolicies, ApiError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT priority, extract(epoch FROM resolve_within)::bigint FROM sla_policies
         WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let items = DEFAULTS
        .iter()
        .map(|(priority, default)| {
            let set = rows.iter().find(|(p, _)| p == priority);
            SlaPolicy {
                priority,
                resolve_within: Duration::from_secs(
                    set.map_or(*default, |(_, s)| u64::try_from(*s).unwrap_or(*default)),
                ),
                default: set.is_none(),
            }
        })
        .collect();
    Ok(SlaPolicies { items })
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<SlaPolicies>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let policies = read(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(Json(policies))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPolicies {
    pub policies: Vec<SetPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    pub priority: String,
    /// `null`: back to the default.
    #[serde(with = "humantime_serde")]
    pub resolve_within: Option<Duration>,
}

pub async fn set(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<SetPolicies>,
) -> Result<Json<SlaPolicies>, ApiError> {
    auth.require(Permission::OrganisationManage)?;
    let mut errors = FieldErrors::default();
    if req.policies.is_empty() || req.policies.len() > DEFAULTS.len() {
        errors.add("policies", "list 1 to 4 priorities");
    }
    for (i, p) in req.policies.iter().enumerate() {
        if !DEFAULTS.iter().any(|(d, _)| *d == p.priority) {
            errors.add(
                format!("policies[{i}].priority"),
                "must be critical, high, medium or low",
            );
        } else if req.policies[..i].iter().any(|q| q.priority == p.priority) {
            errors.add(format!("policies[{i}].priority"), "is listed twice");
        }
        if p.resolve_within
            .is_some_and(|d| d < Duration::from_secs(60) || d > LONGEST)
        {
            errors.add(
                format!("policies[{i}].resolve_within"),
                "must be from 1 minute to 366 days, or null for the default",
            );
        }
    }
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let before = read(&mut tx, tenant).await?;
    for p in &req.policies {
        match p.resolve_within {
            Some(within) => {
                sqlx::query(
                    "INSERT INTO sla_policies (tenant_id, priority, resolve_within)
                     VALUES ($1, $2, make_interval(secs => $3))
                     ON CONFLICT (tenant_id, priority)
                         DO UPDATE SET resolve_within = EXCLUDED.resolve_within",
                )
                .bind(tenant)
                .bind(&p.priority)
                .bind(within.as_secs_f64())
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM sla_policies WHERE tenant_id = $1 AND priority = $2")
                    .bind(tenant)
                    .bind(&p.priority)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    let after = read(&mut tx, tenant).await?;
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "organisation.sla_policies",
        ("tenant", tenant),
        json!({ "before": before.items, "after": after.items }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}
