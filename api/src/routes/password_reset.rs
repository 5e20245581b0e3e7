//! Password reset by email, for users who forgot theirs.
//!
//! - `POST /api/v1/auth/password-reset` `{"tenant", "email"}`: always answers 202 with the same
//!   body, whether the account exists or not (no account can be discovered through it). For an
//!   enabled account, a reset token (`mprs.<tenant>.<id>.<secret>`, kept as a keyed hash) valid
//!   for [`TOKEN_TTL_MINUTES`] minutes is mailed to the account's address, in the `[api]
//!   reset_link` when one is configured; a new request retires the previous token, and at most
//!   [`REQUESTS_PER_HOUR`] mails go to one account per hour. 503 when the server has no
//!   `[api.smtp]`.
//! - `POST /api/v1/auth/password-reset/confirm` `{"token", "password", "code" | "recovery_code"}`:
//!   sets the new password (the password policy applies) and ends every session of the user.
//!   An account with MFA must send its second factor as well (the factor's failure counting and
//!   lock apply): a mailbox alone never takes over an account that has a second factor. The
//!   token works once.
//!
//! Both are under the per-address rate limit of `/api/v1/auth/...` and audited
//! (`auth.password_reset_request`, `auth.password_reset`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api_keys::parse_token;
use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::error::{ApiError, Body};
use crate::routes::mfa::{self as mfa_routes, Attempt, Enrollment};
use crate::users::{self, UserError};

/// How long a reset token works.
pub const TOKEN_TTL_MINUTES: i32 = 30;
/// Reset mails per account and hour, at most.
pub const REQUESTS_PER_HOUR: i64 = 3;
const PREFIX: &str = "mprs";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The organisation's slug, as at login.
    pub tenant: String,
    pub email: String,
}

/// The one answer of a reset request.
fn accepted() -> (StatusCode, Json<Value>) {
    let message = format!(
        "if an account with this email exists in this organisation, a reset link is on its way; it works for {TOKEN_TTL_MINUTES} minutes"
    );
    (
        StatusCode::ACCEPTED,
        Json(json!({ "status": "accepted", "message": message })),
    )
}

pub async fn request(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(req): Body<ResetRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(mailer) = state.mailer.clone() else {
        return Err(ApiError::Unavailable(
            "password reset by email is not set up on this server: ask an admin of your organisation to reset your password"
                .into(),
        ));
    };
    if req.tenant.len() > 63 || req.email.len() > 320 {
        return Ok(accepted());
    }
    let tenant = match users::tenant_by_slug(&state.pool, &req.tenant).await {
        Ok(tenant) => tenant,
        Err(UserError::UnknownTenant(_)) => return Ok(accepted()),
        Err(e) => return Err(ApiError::Internal(e.into())),
    };
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let user: Option<(Uuid, String, String, i64)> = sqlx::query_as(
        "SELECT u.id, u.email, u.display_name,
                (SELECT count(*) FROM password_resets r
                 WHERE r.tenant_id = u.tenant_id AND r.user_id = u.id
                   AND r.created_at > now() - interval '1 hour')
         FROM users u
         WHERE u.tenant_id = $1 AND lower(u.email) = lower($2) AND NOT u.disabled
           AND u.erased_at IS NULL",
    )
    .bind(tenant)
    .bind(req.email.trim())
    .fetch_optional(&mut *tx)
    .await?;
    let entry = |user: Option<Uuid>, outcome, why: &str| {
        Entry::new(Some(tenant), user, "auth.password_reset_request", outcome)
            .detail(json!({ "email": req.email.trim(), "result": why }))
    };
    let Some((user, email, name, recent)) = user else {
        audit::write(
            &mut tx,
            &entry(None, Outcome::Failure, "no such account"),
            &meta,
        )
        .await?;
        tx.commit().await?;
        return Ok(accepted());
    };
    if recent >= REQUESTS_PER_HOUR {
        audit::write(
            &mut tx,
            &entry(Some(user), Outcome::Denied, "too many requests this hour"),
            &meta,
        )
        .await?;
        tx.commit().await?;
        return Ok(accepted());
    }
    let id = Uuid::new_v4();
    let (token, hash) = state.api_keys.new_token(PREFIX, tenant, id);
    sqlx::query(
        "UPDATE password_resets SET used_at = now()
         WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL",
    )
    .bind(tenant)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO password_resets (id, tenant_id, user_id, token_hash, expires_at, ip)
         VALUES ($1, $2, $3, $4, now() + make_interval(mins => $5), $6)",
    )
    .bind(id)
    .bind(tenant)
    .bind(user)
    .bind(hash.as_slice())
    .bind(TOKEN_TTL_MINUTES)
    .bind(meta.ip.as_deref())
    .execute(&mut *tx)
    .await?;
    audit::write(
        &mut tx,
        &entry(Some(user), Outcome::Success, "mailed").target("password_reset", id),
        &meta,
    )
    .await?;
    tx.commit().await?;
    let text = compose(&token, state.reset_link.as_deref(), &req.tenant);
    // Sent after the answer: how long mail takes must not tell which accounts exist.
    state.after_answer.spawn(async move {
        match mailer
            .send(&email, &name, "Reset your MaintAInPro password", &text)
            .await
        {
            Ok(()) => {
                metrics::counter!("maintainpro_password_reset_mails_total", "outcome" => "sent")
                    .increment(1)
            }
            Err(e) => {
                metrics::counter!("maintainpro_password_reset_mails_total", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(%tenant, %user, error = %e, "password reset mail failed");
            }
        }
    });
    Ok(accepted())
}

/// The mail's text: the link when one is configured, the token and the call otherwise.
pub fn compose(token: &str, link: Option<&str>, slug: &str) -> String {
    let how = match link {
        Some(link) => format!(
            "Open this link to choose a new password:\n\n{}\n",
            link.replace("{token}", token)
        ),
        None => format!(
            "Your reset token:\n\n{token}\n\nSend it with your new password to \
             POST /api/v1/auth/password-reset/confirm ({{\"token\": ..., \"password\": ...}}).\n"
        ),
    };
    format!(
        "Someone asked to reset the password of your account in the organisation \"{slug}\".\n\n\
         {how}\nIt works once, for {TOKEN_TTL_MINUTES} minutes. If your account uses MFA, you \
         will need your authenticator app or a recovery code as well. Setting a new password \
         signs you out everywhere.\n\nIf you did not ask for this, ignore this mail: your \
         password stays as it is.\n"
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    pub token: String,
    pub password: String,
    /// The current code of the authenticator app, for an account with MFA.
    pub code: Option<String>,
    /// Or one of the account's recovery codes.
    pub recovery_code: Option<String>,
}

/// The refusal of a token that is wrong, used or expired: the same for each.
fn bad_token() -> ApiError {
    ApiError::field(
        "token",
        "this reset token is not valid (wrong, used or expired): ask for a new one",
    )
}

pub async fn confirm(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(req): Body<ResetConfirm>,
) -> Result<Json<Value>, ApiError> {
    let presented = parse_token(PREFIX, req.token.trim()).ok_or_else(bad_token)?;
    let factor = mfa_routes::factor(req.code.as_deref(), req.recovery_code.as_deref())?;
    let tenant = presented.tenant;
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let found: Option<(Uuid, Vec<u8>, String)> = sqlx::query_as(
        "SELECT r.user_id, r.token_hash, t.slug
         FROM password_resets r JOIN users u ON u.id = r.user_id
              JOIN tenants t ON t.id = r.tenant_id
         WHERE r.tenant_id = $1 AND r.id = $2 AND r.used_at IS NULL AND r.expires_at > now()
           AND NOT u.disabled AND u.erased_at IS NULL",
    )
    .bind(tenant)
    .bind(presented.id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user, hash, slug)) = found else {
        return Err(refuse(
            &state,
            tenant,
            None,
            &meta,
            "unknown, used or expired token",
        )
        .await);
    };
    if !state.api_keys.matches(presented.text, &hash) {
        return Err(refuse(&state, tenant, Some(user), &meta, "wrong token").await);
    }
    // The second factor, when the account has one: the mailbox alone is not enough.
    if mfa_routes::is_on(&mut tx, tenant, user).await? {
        let factor = factor.ok_or_else(mfa_routes::factor_required)?;
        let attempt = Attempt {
            tenant,
            user,
            purpose: "password_reset",
        };
        let checked = mfa_routes::check_factor(
            &mut tx,
            &state.mfa,
            attempt,
            factor,
            Enrollment::Confirmed,
            &meta,
        )
        .await?;
        // Committed whatever the outcome: failures count towards the lock.
        tx.commit().await?;
        checked.accepted()?;
    } else {
        tx.commit().await?;
    }
    let ended = users::complete_reset(
        &state.pool,
        &state.passwords,
        tenant,
        &slug,
        presented.id,
        &req.password,
        &meta,
    )
    .await
    .map_err(|e| match e {
        UserError::Policy(violations) => ApiError::field_each("password", violations),
        e => ApiError::Internal(e.into()),
    })?
    .ok_or_else(bad_token)?;
    Ok(Json(
        json!({ "status": "password_set", "sessions_ended": ended }),
    ))
}

/// Audits a refused token and returns the refusal.
async fn refuse(
    state: &AppState,
    tenant: Uuid,
    user: Option<Uuid>,
    meta: &RequestMeta,
    why: &str,
) -> ApiError {
    audit::record(
        &state.pool,
        Entry::new(Some(tenant), user, "auth.password_reset", Outcome::Failure)
            .detail(json!({ "result": why })),
        meta,
    )
    .await;
    bad_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mail_holds_the_link_or_the_token_and_what_to_do() {
        let token = "mprs.a.b.c";
        let linked = compose(
            token,
            Some("https://cmms.example.com/reset?token={token}"),
            "acme",
        );
        assert!(linked.contains("https://cmms.example.com/reset?token=mprs.a.b.c"));
        assert!(linked.contains("\"acme\"") && linked.contains("30 minutes"));
        let bare = compose(token, None, "acme");
        assert!(bare.contains(token) && bare.contains("/api/v1/auth/password-reset/confirm"));
    }
}
