//! Access tokens (JWT, HS256 pinned, key ids with rotation), the short-lived tokens of a
//! login waiting for its second factor, and the extractors that authenticate a request:
//! [`AuthUser`] (a signed-in user) and [`Caller`] (a user or an API key with the scope the
//! handler names).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use model::TenantId;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::api_keys::{self, Scope};
use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::permissions::{Permission, Permissions};
use crate::session_cache::Answer;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub tid: Uuid,
    /// The session (refresh-token family) the token belongs to.
    pub sid: Uuid,
    pub role: String,
    pub typ: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// What a token is for (its `typ` claim). Each is accepted only where that type is asked for:
/// a token of a login halfway through MFA never passes as an access token, nor the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// A session's access token.
    Access,
    /// The password was right and the account has MFA: good only for
    /// `POST /api/v1/auth/login/mfa`.
    Mfa,
    /// The password was right and the organisation requires MFA the account does not have
    /// yet: good only for enrolling and confirming.
    MfaEnroll,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Access => "access",
            TokenType::Mfa => "mfa",
            TokenType::MfaEnroll => "mfa_enroll",
        }
    }
}

/// How long a token of a login halfway through MFA lasts.
pub const MFA_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// A key that verifies tokens, and until when.
struct VerifyingKey {
    kid: String,
    key: DecodingKey,
    until: Option<DateTime<Utc>>,
}

/// Signs and checks access tokens: one pinned algorithm (HS256), a key id in every header,
/// keys from configuration only. The current key signs; retiring keys still verify until
/// their time is up. A header naming another algorithm, an unknown or missing key id, or
/// carrying its own key material (`jku`, `jwk`, `x5u`, `x5c`) is refused.
pub struct TokenKeys {
    kid: String,
    encoding: EncodingKey,
    verifying: Vec<VerifyingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    pub fn new(config: &ApiConfig) -> Arc<Self> {
        let secret = config.jwt_secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        let mut verifying = vec![VerifyingKey {
            kid: config.jwt_kid.clone(),
            key: DecodingKey::from_secret(secret),
            until: None,
        }];
        verifying.extend(config.jwt_previous_keys.iter().map(|k| VerifyingKey {
            kid: k.kid.clone(),
            key: DecodingKey::from_secret(k.secret.expose().as_bytes()),
            until: Some(k.until),
        }));
        Arc::new(Self {
            kid: config.jwt_kid.clone(),
            encoding: EncodingKey::from_secret(secret),
            verifying,
            validation,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            ttl: config.access_token_ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// An access token of `session`.
    pub fn issue(
        &self,
        user: Uuid,
        tenant: TenantId,
        role: &str,
        session: Uuid,
    ) -> Result<String, ApiError> {
        self.issue_as(TokenType::Access, user, tenant, role, session, self.ttl)
    }

    /// A token of type `typ` lasting `ttl`. Tokens of a login halfway through MFA have no
    /// session yet: `sid` is then a fresh id of the token itself.
    pub fn issue_as(
        &self,
        typ: TokenType,
        user: Uuid,
        tenant: TenantId,
        role: &str,
        sid: Uuid,
        ttl: Duration,
    ) -> Result<String, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| ApiError::Internal(e.into()))?
            .as_secs();
        let claims = Claims {
            sub: user,
            tid: tenant.as_uuid(),
            sid,
            role: role.to_owned(),
            typ: typ.as_str().to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(e.into()))
    }

    /// Checks an access token: signature, algorithm, key id, issuer, audience, expiry and
    /// token type.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        self.verify_as(token, TokenType::Access)
    }

    /// As [`Self::verify`], for a token of type `typ`: any other type is refused.
    pub fn verify_as(&self, token: &str, typ: TokenType) -> Result<Claims, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| ApiError::Unauthenticated)?;
        if header.alg != Algorithm::HS256
            || header.jku.is_some()
            || header.jwk.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(ApiError::Unauthenticated);
        }
        let kid = header.kid.ok_or(ApiError::Unauthenticated)?;
        let key = self
            .verifying
            .iter()
            .find(|k| k.kid == kid)
            .filter(|k| k.until.is_none_or(|until| Utc::now() < until))
            .ok_or(ApiError::Unauthenticated)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation)
            .map_err(|_| ApiError::Unauthenticated)?;
        if data.claims.typ != typ.as_str() {
            return Err(ApiError::Unauthenticated);
        }
        Ok(data.claims)
    }
}

/// The bearer token of a request's `Authorization` header.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthenticated)?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or(ApiError::Unauthenticated)?;
    Ok(token.trim())
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user's access token, of this session.
    Session(Uuid),
    /// An API key, holding these scopes.
    ApiKey { id: Uuid, scopes: Vec<Scope> },
}

/// The role of an API key. A key holds no permissions, so [`AuthUser::require`] never lets a
/// key pass; only [`AuthUser::require_scope`] does, on the key's scopes.
pub const API_KEY_ROLE: &str = "service";

/// An authenticated caller. Handlers that take it reject unauthenticated requests with 401,
/// and API keys with 403: a key passes only where the handler takes a [`Caller`] and names
/// the scope it needs.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user; for an API key, the admin who created it, who answers for what it does.
    pub user: Uuid,
    pub tenant: TenantId,
    /// The user's role as it is now (not as the token says: a changed role holds at the
    /// next request); [`API_KEY_ROLE`] for an API key.
    pub role: String,
    /// What the role allows; none for an API key.
    pub permissions: Permissions,
    pub principal: Principal,
    /// Where the request came from and what it asked for, for the audit entry of a denial.
    request: Arc<DeniedRequest>,
}

/// What the audit log records of a request refused for the caller's role or scopes.
#[derive(Debug)]
struct DeniedRequest {
    pool: sqlx::PgPool,
    /// Where the entry's write runs, so that the stop waits for it.
    after_answer: tokio_util::task::TaskTracker,
    meta: RequestMeta,
    method: String,
    path: String,
}

impl AuthUser {
    /// The session of a signed-in user; an API key has none.
    pub fn session(&self) -> Result<Uuid, ApiError> {
        match self.principal {
            Principal::Session(session) => Ok(session),
            Principal::ApiKey { .. } => Err(ApiError::UserOnly),
        }
    }

    /// Whether the caller is a user who sees only the work orders they requested (their role
    /// opens work orders without `work_orders:read`). An API key with the read scope sees all.
    pub fn sees_only_own_work_orders(&self) -> bool {
        matches!(self.principal, Principal::Session(_))
            && !self.permissions.has(Permission::WorkOrdersRead)
    }

    /// Whether the caller's role allows `permission` (never for an API key).
    pub fn can(&self, permission: Permission) -> bool {
        matches!(self.principal, Principal::Session(_)) && self.permissions.has(permission)
    }

    /// Refuses the request (403) unless the caller is a user whose role allows `permission`.
    /// A refusal is written to the audit log (`permission.denied`, with the method, path, the
    /// caller's role and the permission) in the background: the answer does not wait for it.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        match self.principal {
            Principal::Session(_) if self.permissions.has(permission) => Ok(()),
            Principal::Session(_) => Err(self.deny(Some(permission), None, ApiError::Forbidden)),
            Principal::ApiKey { .. } => Err(self.deny(Some(permission), None, ApiError::UserOnly)),
        }
    }

    /// As [`Self::require`] for a user; an API key passes when it holds `scope`. A refusal is
    /// audited alike, with the key and the scope it lacked.
    pub fn require_scope(&self, scope: Scope, permission: Permission) -> Result<(), ApiError> {
        match &self.principal {
            Principal::Session(_) => self.require(permission),
            Principal::ApiKey { scopes, .. } if scopes.contains(&scope) => Ok(()),
            Principal::ApiKey { .. } => {
                Err(self.deny(None, Some(scope), ApiError::MissingScope(scope.as_str())))
            }
        }
    }

    /// Audits a refusal in the background and returns `error`.
    fn deny(
        &self,
        permission: Option<Permission>,
        scope: Option<Scope>,
        error: ApiError,
    ) -> ApiError {
        tracing::info!(user = %self.user, role = %self.role, "permission denied");
        let request = Arc::clone(&self.request);
        let (tenant, user) = (self.tenant.as_uuid(), self.user);
        let mut detail = serde_json::json!({
            "method": request.method,
            "path": request.path,
            "role": self.role,
        });
        if let Principal::ApiKey { id, .. } = self.principal {
            detail["api_key"] = id.to_string().into();
        }
        if let Some(scope) = scope {
            detail["scope"] = scope.as_str().into();
        }
        if let Some(permission) = permission {
            detail["permission"] = permission.as_str().into();
        }
        let after_answer = request.after_answer.clone();
        after_answer.spawn(async move {
            let entry = Entry::new(
                Some(tenant),
                Some(user),
                "permission.denied",
                Outcome::Denied,
            )
            .detail(detail);
            audit::record(&request.pool, entry, &request.meta).await;
        });
        error
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let auth = authenticate(parts, state).await?;
        if let Principal::ApiKey { .. } = auth.principal {
            return Err(auth.deny(None, None, ApiError::UserOnly));
        }
        Ok(auth)
    }
}

/// An authenticated caller that may be an API key, for the handlers that serve gateways and
/// services. The handler reaches the [`AuthUser`] only through [`Caller::require_scope`], so
/// it cannot let a key through without naming the scope the endpoint needs.
#[derive(Debug)]
pub struct Caller(AuthUser);

impl Caller {
    pub fn tenant(&self) -> TenantId {
        self.0.tenant
    }

    /// What the caller's role allows; none for an API key.
    pub fn permissions(&self) -> Permissions {
        self.0.permissions
    }

    /// The caller, if it may do what needs `scope` (an API key) or `permission` (a user);
    /// see [`AuthUser::require_scope`].
    pub fn require_scope(self, scope: Scope, permission: Permission) -> Result<AuthUser, ApiError> {
        self.0.require_scope(scope, permission)?;
        Ok(self.0)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state).await.map(Caller)
    }
}

/// The caller of a request with an access token or an API key, each checked in full (an
/// ended session, a revoked or expired key is refused) and rate-limited.
async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<AuthUser, ApiError> {
    let meta = match RequestMeta::from_request_parts(parts, state).await {
        Ok(meta) => meta,
        Err(never) => match never {},
    };
    let token = bearer(parts)?;
    let (tenant, user, role, permissions, principal) = if api_keys::looks_like_key(token) {
        let key = verify_api_key(state, token, &meta).await?;
        (
            key.tenant,
            key.created_by,
            API_KEY_ROLE.to_owned(),
            Permissions::NONE,
            Principal::ApiKey {
                id: key.id,
                scopes: key.scopes,
            },
        )
    } else {
        let claims = state.keys.verify(token)?;
        // The tenant's rate limit, before any database work: one tenant's flood must not
        // spend what another's requests need.
        state
            .protection
            .admit_tenant(TenantId::from_uuid(claims.tid))?;
        // A token outlives nothing it stands for: a revoked session (logout, reuse of a
        // refresh token, an admin's revocation) or a disabled user ends it at once, and the
        // role is the user's role now, not when the token was issued.
        let Answer { role, permissions } =
            session_check(state, claims.tid, claims.sid, claims.sub).await?;
        (
            claims.tid,
            claims.sub,
            role,
            permissions,
            Principal::Session(claims.sid),
        )
    };
    #[cfg(feature = "rls-probe")]
    let tenant = rls_probe::app_tenant(parts, tenant);
    Ok(AuthUser {
        user,
        tenant: TenantId::from_uuid(tenant),
        role,
        permissions,
        principal,
        request: Arc::new(DeniedRequest {
            pool: state.pool.clone(),
            after_answer: state.after_answer.clone(),
            meta,
            method: parts.method.to_string(),
            // The path only: a query string may carry what does not belong in a log.
            path: parts.uri.path().chars().take(300).collect(),
        }),
    })
}

/// The session check of an access token: remembered in the process while the database's
/// announcements of changes are heard ([`crate::session_cache`]), read from the database
/// otherwise.
async fn session_check(
    state: &AppState,
    tenant: Uuid,
    session: Uuid,
    user: Uuid,
) -> Result<Answer, ApiError> {
    if let Some(answer) = state.session_cache.get(tenant, session, user, Utc::now()) {
        metrics::counter!("maintainpro_session_checks_total", "source" => "cache").increment(1);
        return Ok(answer);
    }
    metrics::counter!("maintainpro_session_checks_total", "source" => "database").increment(1);
    let ticket = state.session_cache.ticket();
    let (answer, expires) = crate::sessions::active_role(&state.pool, tenant, session, user)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if let Some(ticket) = ticket {
        state
            .session_cache
            .store(ticket, tenant, session, user, answer.clone(), expires);
    }
    Ok(answer)
}

/// A verified API key.
struct VerifiedKey {
    tenant: Uuid,
    id: Uuid,
    created_by: Uuid,
    scopes: Vec<Scope>,
}

/// Checks an API key: well formed, its row found under its tenant, the secret right, neither
/// revoked nor expired. Every refusal answers 401 alike; one naming a key of a real
/// organisation is audited (`auth.api_key`, failure, with the key id and why). The tenant's
/// limit applies before the lookup, the key's own after it, so that nobody without the key
/// can spend the key's budget.
async fn verify_api_key(
    state: &AppState,
    token: &str,
    meta: &RequestMeta,
) -> Result<VerifiedKey, ApiError> {
    let key = api_keys::parse_key(token).ok_or(ApiError::Unauthenticated)?;
    state
        .protection
        .admit_tenant(TenantId::from_uuid(key.tenant))?;
    let mut tx = migrations::begin_tenant(&state.pool, key.tenant).await?;
    let row = sqlx::query(
        "SELECT secret_hash, scopes, created_by, revoked_at IS NOT NULL AS revoked,
                expires_at IS NOT NULL AND expires_at <= now() AS expired,
                last_used_at IS NULL OR last_used_at <= now() - make_interval(secs => $3)
                    AS use_unrecorded
         FROM api_keys WHERE tenant_id = $1 AND id = $2",
    )
    .bind(key.tenant)
    .bind(key.id)
    .bind(api_keys::LAST_USED_RESOLUTION.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let refusal = match &row {
        None => Some("unknown_key"),
        Some(row) => {
            let hash: Vec<u8> = row.try_get("secret_hash")?;
            if !state.api_keys.matches(key.text, &hash) {
                Some("wrong_secret")
            } else if row.try_get::<bool, _>("revoked")? {
                Some("revoked")
            } else if row.try_get::<bool, _>("expired")? {
                Some("expired")
            } else {
                None
            }
        }
    };
    if let Some(reason) = refusal {
        tracing::info!(tenant = %key.tenant, api_key = %key.id, reason, "API key refused");
        // Only an organisation that exists has an audit log to write to.
        let organisation = row.is_some()
            || sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
                .bind(key.tenant)
                .fetch_one(&mut *tx)
                .await?;
        if organisation {
            let entry = Entry::new(Some(key.tenant), None, "auth.api_key", Outcome::Failure)
                .target("api_key", key.id)
                .detail(serde_json::json!({ "reason": reason }));
            audit::write(&mut tx, &entry, meta).await?;
            tx.commit().await?;
        }
        return Err(ApiError::Unauthenticated);
    }
    let row = row.ok_or(ApiError::Unauthenticated)?;
    if row.try_get::<bool, _>("use_unrecorded")? {
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE tenant_id = $1 AND id = $2")
            .bind(key.tenant)
            .bind(key.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    state.protection.admit_api_key(key.id)?;
    let scopes: Vec<String> = row.try_get("scopes")?;
    Ok(VerifiedKey {
        tenant: key.tenant,
        id: key.id,
        created_by: row.try_get("created_by")?,
        // The table's check admits known scopes only.
        scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys() -> Arc<TokenKeys> {
        TokenKeys::new(&ApiConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Secret::new("x".repeat(32)),
            Secret::new("p".repeat(32)),
        ))
    }

    #[test]
    fn tokens_round_trip_and_tampering_fails() {
        let k = keys();
        let tenant = TenantId::new_random();
        let token = k.issue(Uuid::nil(), tenant, "admin", Uuid::nil()).unwrap();
        assert_eq!(k.verify(&token).unwrap().tid, tenant.as_uuid());
        let mut bad = token.clone();
        bad.pop();
        assert!(k.verify(&bad).is_err());
        let other = TokenKeys::new(&ApiConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Secret::new("y".repeat(32)),
            Secret::new("p".repeat(32)),
        ));
        assert!(other.verify(&token).is_err());
    }

    /// Encodes `claims` with `header`, signed with `secret` (HS256 whatever the header says).
    fn forge(header: serde_json::Value, claims: serde_json::Value, secret: &[u8]) -> String {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use hmac::Mac as _;
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{h}.{c}").as_bytes());
        format!(
            "{h}.{c}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    fn good_claims() -> serde_json::Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        serde_json::json!({
            "sub": Uuid::nil(), "tid": Uuid::nil(), "sid": Uuid::nil(), "role": "admin",
            "typ": "access", "iss": "maintainpro", "aud": "maintainpro-api",
            "iat": now, "exp": now + 600,
        })
    }

    fn with(mut v: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        v[key] = value;
        v
    }

    fn without(mut v: serde_json::Value, key: &str) -> serde_json::Value {
        if let Some(o) = v.as_object_mut() {
            o.remove(key);
        }
        v
    }

    #[test]
    fn the_attack_corpus_is_refused() {
        let k = keys();
        let secret = "x".repeat(32);
        let header = serde_json::json!({ "alg": "HS256", "typ": "JWT", "kid": "primary" });
        // The forger works: a correct token verifies.
        assert!(
            k.verify(&forge(header.clone(), good_claims(), secret.as_bytes()))
                .is_ok()
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let cases: Vec<(&str, serde_json::Value, serde_json::Value)> = vec![
            (
                "alg none",
                with(header.clone(), "alg", "none".into()),
                good_claims(),
            ),
            (
                "RS256 header (key confusion)",
                with(header.clone(), "alg", "RS256".into()),
                good_claims(),
            ),
            (
                "HS512 header",
                with(header.clone(), "alg", "HS512".into()),
                good_claims(),
            ),
            (
                "wrong audience",
                header.clone(),
                with(good_claims(), "aud", "other-api".into()),
            ),
            (
                "wrong issuer",
                header.clone(),
                with(good_claims(), "iss", "someone-else".into()),
            ),
            (
                "refresh-type token",
                header.clone(),
                with(good_claims(), "typ", "refresh".into()),
            ),
            (
                "no token type",
                header.clone(),
                without(good_claims(), "typ"),
            ),
            (
                "expired",
                header.clone(),
                with(good_claims(), "exp", (now - 60).into()),
            ),
            ("no expiry", header.clone(), without(good_claims(), "exp")),
            ("no key id", without(header.clone(), "kid"), good_claims()),
            (
                "unknown key id",
                with(header.clone(), "kid", "nobody".into()),
                good_claims(),
            ),
            (
                "injected key id",
                with(header.clone(), "kid", "../../dev/null".into()),
                good_claims(),
            ),
            (
                "jku header",
                with(header.clone(), "jku", "https://evil.example/keys".into()),
                good_claims(),
            ),
            (
                "jwk header",
                with(
                    header.clone(),
                    "jwk",
                    serde_json::json!({"kty": "oct", "k": "eA"}),
                ),
                good_claims(),
            ),
            (
                "x5u header",
                with(header.clone(), "x5u", "https://evil.example/cert".into()),
                good_claims(),
            ),
        ];
        for (name, h, c) in cases {
            let token = forge(h, c, secret.as_bytes());
            assert!(k.verify(&token).is_err(), "{name} was accepted");
        }
        // Signed with another secret.
        let token = forge(
            header,
            good_claims(),
            b"another secret of thirty-two bytes!!",
        );
        assert!(k.verify(&token).is_err());
    }

    #[test]
    fn a_retired_key_verifies_until_its_time_then_not() {
        let old = "o".repeat(32);
        let mut config = ApiConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Secret::new("n".repeat(32)),
            Secret::new("p".repeat(32)),
        );
        config.jwt_kid = "2026-11".into();
        let header = serde_json::json!({ "alg": "HS256", "typ": "JWT", "kid": "2026-10" });
        let token = forge(header, good_claims(), old.as_bytes());
        config.jwt_previous_keys = vec![crate::config::PreviousKey {
            kid: "2026-10".into(),
            secret: Secret::new(old.clone()),
            until: Utc::now() + chrono::Duration::hours(1),
        }];
        assert!(
            TokenKeys::new(&config).verify(&token).is_ok(),
            "in its overlap window"
        );
        config.jwt_previous_keys[0].until = Utc::now() - chrono::Duration::seconds(1);
        assert!(TokenKeys::new(&config).verify(&token).is_err(), "retired");
        // New tokens carry the current key id.
        let fresh = TokenKeys::new(&config)
            .issue(Uuid::nil(), TenantId::new_random(), "admin", Uuid::nil())
            .unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(),
            Some("2026-11")
        );
    }

    #[test]
    fn each_token_type_is_accepted_only_as_itself() {
        let k = keys();
        let tenant = TenantId::new_random();
        let types = [TokenType::Access, TokenType::Mfa, TokenType::MfaEnroll];
        for issued in types {
            let token = k
                .issue_as(
                    issued,
                    Uuid::nil(),
                    tenant,
                    "admin",
                    Uuid::nil(),
                    MFA_TOKEN_TTL,
                )
                .unwrap();
            for asked in types {
                assert_eq!(
                    k.verify_as(&token, asked).is_ok(),
                    issued == asked,
                    "{issued:?} verified as {asked:?}"
                );
            }
            assert_eq!(k.verify(&token).is_ok(), issued == TokenType::Access);
        }
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        // {"alg":"none"} with valid-looking claims.
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAiLCJ0aWQiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAiLCJyb2xlIjoiYWRtaW4iLCJ0eXAiOiJhY2Nlc3MiLCJpc3MiOiJtYWludGFpbnBybyIsImF1ZCI6Im1haW50YWlucHJvLWFwaSIsImlhdCI6MCwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert!(keys().verify(token).is_err());
    }
}

/// The test switch of the `rls-probe` feature: a request with the header
/// `x-rls-probe-app-tenant: <tenant>` is served by handlers that filter by that tenant, while
/// row-level security stays set to the caller's own (`migrations::rls_probe`), so only the
/// policies stand between the caller and the other tenant's rows.
#[cfg(feature = "rls-probe")]
pub mod rls_probe {
    use axum::extract::Request;
    use axum::http::request::Parts;
    use axum::middleware::Next;
    use axum::response::Response;
    use migrations::rls_probe::DATABASE_TENANT;
    use uuid::Uuid;

    pub const HEADER: &str = "x-rls-probe-app-tenant";

    /// Runs the request in a scope where [`app_tenant`] can pin the database's tenant.
    pub async fn scope(req: Request, next: Next) -> Response {
        DATABASE_TENANT
            .scope(std::cell::Cell::new(None), next.run(req))
            .await
    }

    /// The tenant the handlers filter by: the header's, if any, with the database's tenant
    /// pinned to the caller's own; otherwise the caller's.
    pub fn app_tenant(parts: &Parts, caller: Uuid) -> Uuid {
        let Some(other) = parts
            .headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Uuid>().ok())
        else {
            return caller;
        };
        match DATABASE_TENANT.try_with(|pinned| pinned.set(Some(caller))) {
            Ok(()) => other,
            Err(_) => caller,
        }
    }
}
