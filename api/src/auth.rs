//! Passwords (Argon2id), access tokens (JWT, HS256 pinned), and the `AuthUser` extractor.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use model::TenantId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::AppState;
use crate::config::ApiConfig;
use crate::error::ApiError;

pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub tid: Uuid,
    pub role: String,
    pub typ: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

const ACCESS: &str = "access";

/// Signs and checks access tokens with one pinned algorithm.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
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
        Arc::new(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            ttl: config.access_token_ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user: Uuid, tenant: TenantId, role: &str) -> Result<String, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| ApiError::Internal(e.into()))?
            .as_secs();
        let claims = Claims {
            sub: user,
            tid: tenant.as_uuid(),
            role: role.to_owned(),
            typ: ACCESS.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(e.into()))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| ApiError::Unauthenticated)?;
        if data.claims.typ != ACCESS {
            return Err(ApiError::Unauthenticated);
        }
        Ok(data.claims)
    }
}

/// An authenticated caller. Handlers that take it reject unauthenticated requests with 401.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: Uuid,
    pub tenant: TenantId,
    pub role: String,
}

impl AuthUser {
    /// Refuses the request (403) unless the caller has one of `roles`.
    pub fn require(&self, roles: &[&str]) -> Result<(), ApiError> {
        if roles.contains(&self.role.as_str()) {
            Ok(())
        } else {
            tracing::info!(user = %self.user, role = %self.role, "permission denied");
            Err(ApiError::Forbidden)
        }
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated)?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or(ApiError::Unauthenticated)?;
        let claims = state.keys.verify(token.trim())?;
        Ok(AuthUser {
            user: claims.sub,
            tenant: TenantId::from_uuid(claims.tid),
            role: claims.role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys() -> Arc<TokenKeys> {
        TokenKeys::new(&ApiConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Secret::new("x".repeat(32)),
        ))
    }

    #[test]
    fn tokens_round_trip_and_tampering_fails() {
        let k = keys();
        let tenant = TenantId::new_random();
        let token = k.issue(Uuid::nil(), tenant, "admin").unwrap();
        assert_eq!(k.verify(&token).unwrap().tid, tenant.as_uuid());
        let mut bad = token.clone();
        bad.pop();
        assert!(k.verify(&bad).is_err());
        let other = TokenKeys::new(&ApiConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Secret::new("y".repeat(32)),
        ));
        assert!(other.verify(&token).is_err());
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        // {"alg":"none"} with valid-looking claims.
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAiLCJ0aWQiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAiLCJyb2xlIjoiYWRtaW4iLCJ0eXAiOiJhY2Nlc3MiLCJpc3MiOiJtYWludGFpbnBybyIsImF1ZCI6Im1haW50YWlucHJvLWFwaSIsImlhdCI6MCwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert!(keys().verify(token).is_err());
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterz", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
