//! Multi-factor authentication over HTTP, and the database side of checking a second factor
//! (used by login and password change too):
//!
//! - `POST /api/v1/auth/mfa/enroll`: a new pending TOTP secret, `{"secret", "otpauth_uri"}`;
//!   409 while MFA is on. Takes an access token, or the `mfa_enroll` token of a login that
//!   the organisation's policy stopped.
//! - `POST /api/v1/auth/mfa/confirm` `{"code"}`: proves the pending secret, turns MFA on and
//!   returns ten recovery codes, once; with an `mfa_enroll` token also the session's tokens,
//!   since password and code are then both proven.
//! - `POST /api/v1/auth/mfa/recovery-codes` `{"code"}`: ten new recovery codes; the old ones
//!   stop working.
//! - `DELETE /api/v1/auth/mfa` `{"password", "code"}` (or `recovery_code`): turns MFA off,
//!   unless the organisation requires it for the caller's role (403).
//! - `POST /api/v1/users/{id}/reset-mfa`: an admin removes a user's MFA (a lost phone); the
//!   user's sessions end.
//! - `GET`, `PUT /api/v1/organisation/mfa-policy` `{"required_roles": [...]}`: the roles that
//!   must use MFA (anyone reads it, admins change it). It applies from each user's next login.
//!
//! A second factor is checked under a lock of the user's MFA row, so two requests never
//! spend the same code or step. Five wrong codes in a row lock the user out of MFA for 15
//! minutes (429 with `Retry-After`); a right one resets the count. Every attempt is audited
//! (`auth.mfa`, and `auth.mfa_locked` when refused for the lock).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use model::TenantId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::auth::{AuthUser, TokenType, bearer};
use crate::error::{ApiError, Body};
use crate::mfa::{self, MfaKeys};
use crate::permissions::Permission;
use crate::sessions::{self, Tokens};
use crate::users::{self, ROLES};

/// Wrong codes in a row that lock a user out of MFA.
pub const MAX_FAILURES: i32 = 5;
/// How long the lock lasts.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// The longest code or recovery code looked at; anything longer is simply wrong.
const MAX_CODE_CHARS: usize = 64;

/// A second factor as the client sent it.
#[derive(Debug, Clone, Copy)]
pub enum Factor<'a> {
    /// A TOTP code of the authenticator app.
    Code(&'a str),
    /// One of the recovery codes.
    RecoveryCode(&'a str),
}

impl Factor<'_> {
    fn kind(self) -> &'static str {
        match self {
            Factor::Code(_) => "totp",
            Factor::RecoveryCode(_) => "recovery_code",
        }
    }
}

/// The factor of a body with optional `code` and `recovery_code`: at most one of them.
pub fn factor<'a>(
    code: Option<&'a str>,
    recovery_code: Option<&'a str>,
) -> Result<Option<Factor<'a>>, ApiError> {
    match (code, recovery_code) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "recovery_code",
            "send either `code` (the 6-digit code of your authenticator app) or `recovery_code`, not both",
        )),
        (Some(c), None) => Ok(Some(Factor::Code(c))),
        (None, Some(r)) => Ok(Some(Factor::RecoveryCode(r))),
        (None, None) => Ok(None),
    }
}

/// The error of a missing second factor on an account with MFA.
pub fn factor_required() -> ApiError {
    ApiError::field(
        "code",
        "this account uses MFA: send `code` (the current 6-digit code of your authenticator app) or `recovery_code`",
    )
}

/// Which enrollment a factor is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    /// MFA that is on.
    Confirmed,
    /// A secret enrolled and not yet proven (recovery codes do not exist yet).
    Pending,
}

/// What checking a second factor found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Accepted,
    Wrong,
    /// Wrong, and the user is now locked out for this long.
    LockedNow(Duration),
    /// Refused without looking: the user is locked out for this long still.
    Locked(Duration),
    /// No enrollment of the kind asked for.
    NotEnrolled,
}

impl Checked {
    /// `Ok` when accepted; otherwise the error to answer with.
    pub fn accepted(self) -> Result<(), ApiError> {
        match self {
            Checked::Accepted => Ok(()),
            Checked::Wrong => Err(ApiError::BadMfaCode),
            Checked::LockedNow(retry_after) | Checked::Locked(retry_after) => {
                Err(ApiError::RateLimited { retry_after })
            }
            Checked::NotEnrolled => Err(not_on()),
        }
    }
}

/// The error of an MFA action on an account without MFA.
fn not_on() -> ApiError {
    ApiError::Conflict(
        "MFA is not on for this account: enroll with POST /api/v1/auth/mfa/enroll and confirm with POST /api/v1/auth/mfa/confirm"
            .to_owned(),
    )
}

/// A user whose second factor is checked, and why (the audit entries say).
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub tenant: Uuid,
    pub user: Uuid,
    pub purpose: &'a str,
}

fn unix_now() -> Result<u64, ApiError> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| ApiError::Internal(e.into()))?
        .as_secs())
}

/// Checks `factor` against the user's enrollment, in the caller's tenant transaction, and
/// records the outcome: the accepted step or spent recovery code, the failure count and lock,
/// and the audit entries. The caller commits whatever the outcome, so that failures count.
pub async fn check_factor(
    conn: &mut PgConnection,
    keys: &MfaKeys,
    attempt: Attempt<'_>,
    factor: Factor<'_>,
    enrollment: Enrollment,
    meta: &RequestMeta,
) -> Result<Checked, ApiError> {
    let Attempt {
        tenant,
        user,
        purpose,
    } = attempt;
    let row = sqlx::query(
        "SELECT secret, last_step, locked_until > now() AS locked,
                ceil(extract(epoch FROM locked_until - now()))::bigint AS wait_s
         FROM user_mfa
         WHERE tenant_id = $1 AND user_id = $2 AND (confirmed_at IS NOT NULL) = $3
         FOR UPDATE",
    )
    .bind(tenant)
    .bind(user)
    .bind(enrollment == Enrollment::Confirmed)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(Checked::NotEnrolled);
    };
    let entry = |action, outcome| {
        Entry::new(Some(tenant), Some(user), action, outcome).target("user", user)
    };
    if row.try_get::<Option<bool>, _>("locked")?.unwrap_or(false) {
        let wait = row.try_get::<Option<i64>, _>("wait_s")?.unwrap_or(1).max(1);
        audit::write(
            conn,
            &entry("auth.mfa_locked", Outcome::Denied)
                .detail(json!({ "purpose": purpose, "factor": factor.kind() })),
            meta,
        )
        .await?;
        return Ok(Checked::Locked(Duration::from_secs(wait.unsigned_abs())));
    }
    let accepted = match factor {
        Factor::Code(code) if code.chars().count() <= MAX_CODE_CHARS => {
            let sealed: Vec<u8> = row.try_get("secret")?;
            let secret = keys
                .open(user, &sealed)
                .map_err(|e| ApiError::Internal(e.into()))?;
            let last = row
                .try_get::<Option<i64>, _>("last_step")?
                .map(i64::unsigned_abs);
            match mfa::verify(&secret, code, unix_now()?, last) {
                Some(step) => {
                    sqlx::query(
                        "UPDATE user_mfa SET last_step = $3, failures = 0, locked_until = NULL
                         WHERE tenant_id = $1 AND user_id = $2",
                    )
                    .bind(tenant)
                    .bind(user)
                    .bind(i64::try_from(step).map_err(|e| ApiError::Internal(e.into()))?)
                    .execute(&mut *conn)
                    .await?;
                    true
                }
                None => false,
            }
        }
        Factor::RecoveryCode(code)
            if enrollment == Enrollment::Confirmed && code.chars().count() <= MAX_CODE_CHARS =>
        {
            match keys.recovery_code_hash(code) {
                Some(hash) => {
                    let spent = sqlx::query(
                        "UPDATE mfa_recovery_codes SET used_at = now()
                         WHERE tenant_id = $1 AND user_id = $2 AND code_hash = $3
                           AND used_at IS NULL",
                    )
                    .bind(tenant)
                    .bind(user)
                    .bind(&hash[..])
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
                        == 1;
                    if spent {
                        sqlx::query(
                            "UPDATE user_mfa SET failures = 0, locked_until = NULL
                             WHERE tenant_id = $1 AND user_id = $2",
                        )
                        .bind(tenant)
                        .bind(user)
                        .execute(&mut *conn)
                        .await?;
                    }
                    spent
                }
                None => false,
            }
        }
        Factor::Code(_) | Factor::RecoveryCode(_) => false,
    };
    if accepted {
        audit::write(
            conn,
            &entry("auth.mfa", Outcome::Success)
                .detail(json!({ "purpose": purpose, "factor": factor.kind() })),
            meta,
        )
        .await?;
        return Ok(Checked::Accepted);
    }
    // A lock that has run out starts the count again.
    let (failures, locked): (i32, bool) = sqlx::query_as(
        "WITH counted AS (
             SELECT CASE WHEN locked_until IS NOT NULL THEN 1 ELSE failures + 1 END AS n
             FROM user_mfa WHERE tenant_id = $1 AND user_id = $2)
         UPDATE user_mfa SET failures = counted.n,
                locked_until = CASE WHEN counted.n >= $3
                                    THEN now() + make_interval(secs => $4) END
         FROM counted
         WHERE tenant_id = $1 AND user_id = $2
         RETURNING counted.n, locked_until IS NOT NULL",
    )
    .bind(tenant)
    .bind(user)
    .bind(MAX_FAILURES)
    .bind(LOCKOUT.as_secs_f64())
    .fetch_one(&mut *conn)
    .await?;
    audit::write(
        conn,
        &entry("auth.mfa", Outcome::Failure).detail(json!({
            "purpose": purpose, "factor": factor.kind(), "failures": failures,
        })),
        meta,
    )
    .await?;
    if locked {
        tracing::warn!(%tenant, %user, "MFA locked after {failures} wrong codes");
        audit::write(
            conn,
            &entry("auth.mfa_locked", Outcome::Denied).detail(json!({
                "purpose": purpose, "failures": failures, "locked_for_s": LOCKOUT.as_secs(),
            })),
            meta,
        )
        .await?;
        return Ok(Checked::LockedNow(LOCKOUT));
    }
    Ok(Checked::Wrong)
}

/// Whether the user has MFA on.
pub async fn is_on(conn: &mut PgConnection, tenant: Uuid, user: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM user_mfa
                        WHERE tenant_id = $1 AND user_id = $2 AND confirmed_at IS NOT NULL)",
    )
    .bind(tenant)
    .bind(user)
    .fetch_one(conn)
    .await
}

/// Whether the organisation requires MFA for `role`.
pub async fn required_for(
    conn: &mut PgConnection,
    tenant: Uuid,
    role: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM tenant_mfa_policy
                        WHERE tenant_id = $1 AND $2 = ANY (required_roles))",
    )
    .bind(tenant)
    .bind(role)
    .fetch_one(conn)
    .await
}

/// Replaces the user's recovery codes with new ones and returns them, for showing once.
async fn replace_recovery_codes(
    conn: &mut PgConnection,
    keys: &MfaKeys,
    tenant: Uuid,
    user: Uuid,
) -> Result<Vec<String>, ApiError> {
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant)
        .bind(user)
        .execute(&mut *conn)
        .await?;
    let codes = mfa::new_recovery_codes();
    let hashes: Vec<Vec<u8>> = codes
        .iter()
        .filter_map(|c| keys.recovery_code_hash(c))
        .map(|h| h.to_vec())
        .collect();
    if hashes.len() != codes.len() {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "a new recovery code does not parse back"
        )));
    }
    sqlx::query(
        "INSERT INTO mfa_recovery_codes (tenant_id, user_id, code_hash)
         SELECT $1, $2, h FROM unnest($3::bytea[]) AS h",
    )
    .bind(tenant)
    .bind(user)
    .bind(&hashes)
    .execute(&mut *conn)
    .await?;
    Ok(codes)
}

/// Who may enroll: a signed-in user, or a login the organisation's policy sent to enroll.
#[derive(Debug)]
pub enum EnrollingCaller {
    Session(AuthUser),
    /// Password proven, MFA required by the policy and not yet on: no session yet.
    Login {
        tenant: Uuid,
        user: Uuid,
    },
}

impl EnrollingCaller {
    fn ids(&self) -> (Uuid, Uuid) {
        match self {
            EnrollingCaller::Session(auth) => (auth.tenant.as_uuid(), auth.user),
            EnrollingCaller::Login { tenant, user } => (*tenant, *user),
        }
    }
}

impl FromRequestParts<AppState> for EnrollingCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Ok(claims) = state.keys.verify_as(bearer(parts)?, TokenType::MfaEnroll) {
            state
                .protection
                .admit_tenant(TenantId::from_uuid(claims.tid))?;
            return Ok(EnrollingCaller::Login {
                tenant: claims.tid,
                user: claims.sub,
            });
        }
        AuthUser::from_request_parts(parts, state)
            .await
            .map(EnrollingCaller::Session)
    }
}

/// What enrolling hands the client: the secret for an authenticator app, as text and URI.
#[derive(Debug, Serialize)]
pub struct NewSecret {
    pub secret: String,
    pub otpauth_uri: String,
}

pub async fn enroll(
    State(state): State<AppState>,
    caller: EnrollingCaller,
    meta: RequestMeta,
) -> Result<Json<NewSecret>, ApiError> {
    let (tenant, user) = caller.ids();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let email: String = sqlx::query_scalar(
        "SELECT email FROM users WHERE tenant_id = $1 AND id = $2 AND NOT disabled",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::Unauthenticated)?;
    let secret = mfa::new_secret();
    let sealed = state
        .mfa
        .seal(user, &secret)
        .map_err(|e| ApiError::Internal(e.into()))?;
    // A pending secret is replaced; a confirmed one is left alone (no row comes back).
    let written = sqlx::query(
        "INSERT INTO user_mfa (user_id, tenant_id, secret) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE
             SET secret = EXCLUDED.secret, created_at = now(), last_step = NULL, failures = 0,
                 locked_until = NULL
             WHERE user_mfa.confirmed_at IS NULL",
    )
    .bind(user)
    .bind(tenant)
    .bind(&sealed)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if written == 0 {
        return Err(ApiError::Conflict(
            "MFA is already on for this account: to use another authenticator, turn MFA off first (DELETE /api/v1/auth/mfa) or ask an admin to reset it"
                .to_owned(),
        ));
    }
    audit::write(
        &mut tx,
        &Entry::new(
            Some(tenant),
            Some(user),
            "auth.mfa_enroll",
            Outcome::Success,
        )
        .target("user", user),
        &meta,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(NewSecret {
        secret: mfa::secret_base32(&secret),
        otpauth_uri: mfa::otpauth_uri(&secret, &email),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// The current 6-digit code of the authenticator app.
    pub code: String,
}

/// New recovery codes, shown once; after a confirmation by an `mfa_enroll` login also the
/// session's tokens.
#[derive(Debug, Serialize)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
    #[serde(flatten)]
    pub tokens: Option<Tokens>,
}

pub async fn confirm(
    State(state): State<AppState>,
    caller: EnrollingCaller,
    meta: RequestMeta,
    Body(req): Body<CodeRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let (tenant, user) = caller.ids();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let role: String = sqlx::query_scalar(
        "SELECT role FROM users WHERE tenant_id = $1 AND id = $2 AND NOT disabled",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::Unauthenticated)?;
    let attempt = Attempt {
        tenant,
        user,
        purpose: "confirm",
    };
    let checked = check_factor(
        &mut tx,
        &state.mfa,
        attempt,
        Factor::Code(&req.code),
        Enrollment::Pending,
        &meta,
    )
    .await?;
    if checked == Checked::NotEnrolled {
        let message = if is_on(&mut tx, tenant, user).await? {
            "MFA is already on for this account"
        } else {
            "no enrollment is pending: start one with POST /api/v1/auth/mfa/enroll"
        };
        return Err(ApiError::Conflict(message.to_owned()));
    }
    if let Err(refused) = checked.accepted() {
        tx.commit().await?;
        return Err(refused);
    }
    sqlx::query("UPDATE user_mfa SET confirmed_at = now() WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    let recovery_codes = replace_recovery_codes(&mut tx, &state.mfa, tenant, user).await?;
    audit::write(
        &mut tx,
        &Entry::new(
            Some(tenant),
            Some(user),
            "auth.mfa_confirm",
            Outcome::Success,
        )
        .target("user", user),
        &meta,
    )
    .await?;
    let tokens = match caller {
        EnrollingCaller::Session(_) => None,
        EnrollingCaller::Login { .. } => {
            let tokens = sessions::start(
                &mut tx,
                &state.keys,
                state.lifetimes,
                tenant,
                user,
                &role,
                &meta,
            )
            .await?;
            audit::write(
                &mut tx,
                &Entry::new(Some(tenant), Some(user), "auth.login", Outcome::Success)
                    .detail(json!({ "mfa": "enrolled" })),
                &meta,
            )
            .await?;
            Some(tokens)
        }
    };
    tx.commit().await?;
    tracing::info!(%tenant, %user, "MFA turned on");
    Ok(Json(RecoveryCodes {
        recovery_codes,
        tokens,
    }))
}

pub async fn recovery_codes(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CodeRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let (tenant, user) = (auth.tenant.as_uuid(), auth.user);
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let attempt = Attempt {
        tenant,
        user,
        purpose: "recovery_codes",
    };
    let checked = check_factor(
        &mut tx,
        &state.mfa,
        attempt,
        Factor::Code(&req.code),
        Enrollment::Confirmed,
        &meta,
    )
    .await?;
    if let Err(refused) = checked.accepted() {
        tx.commit().await?;
        return Err(refused);
    }
    let recovery_codes = replace_recovery_codes(&mut tx, &state.mfa, tenant, user).await?;
    audit::write(
        &mut tx,
        &Entry::new(
            Some(tenant),
            Some(user),
            "auth.mfa_recovery_codes",
            Outcome::Success,
        )
        .target("user", user),
        &meta,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(RecoveryCodes {
        recovery_codes,
        tokens: None,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisableRequest {
    pub password: String,
    pub code: Option<String>,
    pub recovery_code: Option<String>,
}

pub async fn disable(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<DisableRequest>,
) -> Result<StatusCode, ApiError> {
    let (tenant, user) = (auth.tenant.as_uuid(), auth.user);
    let factor = factor(req.code.as_deref(), req.recovery_code.as_deref())?;
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let role: String =
        sqlx::query_scalar("SELECT role FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
    let required = required_for(&mut tx, tenant, &role).await?;
    let on = is_on(&mut tx, tenant, user).await?;
    tx.commit().await?;
    let refuse = |why: &str| {
        Entry::new(
            Some(tenant),
            Some(user),
            "auth.mfa_disable",
            Outcome::Denied,
        )
        .target("user", user)
        .detail(json!({ "reason": why }))
    };
    if required {
        audit::record(&state.pool, refuse("required_by_policy"), &meta).await;
        return Err(ApiError::ForbiddenByPolicy(format!(
            "your organisation requires MFA for the role {role}: it cannot be turned off (an admin can reset it for a lost authenticator)"
        )));
    }
    if !on {
        return Err(not_on());
    }
    if !super::password::verify_current(&state, tenant, user, &req.password).await? {
        audit::record(&state.pool, refuse("wrong_password"), &meta).await;
        return Err(ApiError::BadCredentials);
    }
    let factor = factor.ok_or_else(factor_required)?;
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let attempt = Attempt {
        tenant,
        user,
        purpose: "disable",
    };
    let checked = check_factor(
        &mut tx,
        &state.mfa,
        attempt,
        factor,
        Enrollment::Confirmed,
        &meta,
    )
    .await?;
    if let Err(refused) = checked.accepted() {
        tx.commit().await?;
        return Err(refused);
    }
    users::remove_mfa(&mut tx, tenant, user).await?;
    audit::write(
        &mut tx,
        &Entry::new(
            Some(tenant),
            Some(user),
            "auth.mfa_disable",
            Outcome::Success,
        )
        .target("user", user),
        &meta,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%tenant, %user, "MFA turned off");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn reset_user(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(user): Path<Uuid>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE tenant_id = $1 AND id = $2)")
            .bind(tenant)
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    // Another tenant's user, or none: 404 before any permission question.
    if !exists {
        return Err(ApiError::NotFound);
    }
    if let Err(denied) = auth.require(Permission::UsersManage) {
        audit::record(
            &state.pool,
            Entry::new(
                Some(tenant),
                Some(auth.user),
                "user.mfa_reset",
                Outcome::Denied,
            )
            .target("user", user),
            &meta,
        )
        .await;
        return Err(denied);
    }
    let ended = users::reset_mfa(&state.pool, tenant, user, Some(auth.user), &meta)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(json!({ "sessions_ended": ended })))
}

/// The roles that must use MFA in the organisation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaPolicy {
    pub required_roles: Vec<String>,
}

async fn read_policy(conn: &mut PgConnection, tenant: Uuid) -> Result<MfaPolicy, sqlx::Error> {
    let roles: Option<Vec<String>> =
        sqlx::query_scalar("SELECT required_roles FROM tenant_mfa_policy WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(conn)
            .await?;
    Ok(MfaPolicy {
        required_roles: roles.unwrap_or_default(),
    })
}

pub async fn policy(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<MfaPolicy>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let policy = read_policy(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(Json(policy))
}

pub async fn set_policy(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<MfaPolicy>,
) -> Result<Json<MfaPolicy>, ApiError> {
    auth.require(Permission::OrganisationManage)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let custom: Vec<String> =
        sqlx::query_scalar("SELECT name FROM custom_roles WHERE tenant_id = $1 ORDER BY name")
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?;
    let unknown: Vec<&str> = req
        .required_roles
        .iter()
        .map(String::as_str)
        .filter(|r| !ROLES.contains(r) && !custom.iter().any(|c| c == r))
        .map(|r| r.get(..40).unwrap_or(r))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::field(
            "required_roles",
            format!(
                "not a role: {}; the roles are {}{}",
                unknown.join(", "),
                ROLES.join(", "),
                if custom.is_empty() {
                    String::new()
                } else {
                    format!(" and the custom roles {}", custom.join(", "))
                }
            ),
        ));
    }
    // Built-in roles in the order of ROLES, then custom roles by name, each once.
    let roles: Vec<&str> = ROLES
        .iter()
        .copied()
        .chain(custom.iter().map(String::as_str))
        .filter(|r| req.required_roles.iter().any(|x| x == r))
        .collect();
    let before = read_policy(&mut tx, tenant).await?;
    sqlx::query(
        "INSERT INTO tenant_mfa_policy (tenant_id, required_roles, updated_by)
         VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE
             SET required_roles = EXCLUDED.required_roles, updated_at = now(),
                 updated_by = EXCLUDED.updated_by",
    )
    .bind(tenant)
    .bind(&roles)
    .bind(auth.user)
    .execute(&mut *tx)
    .await?;
    audit::write(
        &mut tx,
        &Entry::new(
            Some(tenant),
            Some(auth.user),
            "organisation.mfa_policy",
            Outcome::Success,
        )
        .target("tenant", tenant)
        .detail(json!({ "before": before.required_roles, "after": roles })),
        &meta,
    )
    .await?;
    let policy = read_policy(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(Json(policy))
}
