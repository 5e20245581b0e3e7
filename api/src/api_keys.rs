//! API keys of gateways and services: the scopes a key may hold, the key's text, and what the
//! database keeps of it.
//!
//! This module owns the rules and the cryptography, nothing else: it never reads the database,
//! never sees a request and never reads the clock (callers pass the time in). The handlers in
//! [`crate::routes::api_keys`] and the extractor in [`crate::auth`] keep what it returns.
//!
//! # The key
//! `mpak.<tenant>.<key id>.<secret>`: the tenant and the key's id as 32 lower-case hex digits
//! each, and 32 random bytes in base64url without padding. The tenant comes first so that the
//! lookup runs under that tenant's row-level security (as with refresh tokens); the key id
//! names the row, so the lookup is by primary key and the secret is compared in constant time.
//! A key is shown once, when it is created or rotated.
//!
//! # At rest
//! Only HMAC-SHA-256 of the whole key is kept, under a key derived from the password pepper
//! (as the MFA recovery codes are). The secret has 256 random bits, so a fast hash is right:
//! a slow password hash like Argon2id guards guessable secrets and would only slow every
//! request. The pepper keeps a database alone from telling whether a key is right, and stops
//! whoever can write the table from planting a key of their own; changing the pepper ends
//! every API key, as it ends every password.
//!
//! # Scopes
//! A key holds one or more scopes and passes only where an endpoint names one of them
//! ([`Scope`]; every scope, what it allows, in [`Scope::ALL`]). Endpoints that name no scope
//! (sign-in, sessions, MFA, passwords, user and key management) refuse every key.

use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use model::settings::Secret;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The first part of every API key, which also tells it from an access token.
pub const PREFIX: &str = model::gateway_key::PREFIX;
/// Random bytes of a key's secret: 256 bits.
const SECRET_BYTES: usize = 32;
/// Characters of the secret in base64url without padding.
const SECRET_CHARS: usize = 43;
/// The longest key text looked at; anything longer is simply not a key.
pub const MAX_KEY_CHARS: usize = 4 + 1 + 32 + 1 + 32 + 1 + SECRET_CHARS;
/// The longest a key may live: a forgotten key must not work for ever by accident (a key
/// without `expires_at` is a deliberate choice).
pub const MAX_LIFETIME: Duration = Duration::from_secs(2 * 365 * 86_400);
/// How long a rotated key keeps working when the request names no overlap.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// The longest overlap of a rotation.
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 86_400);
/// Characters of a key's name.
pub const MAX_NAME_CHARS: usize = 100;
/// Live (neither revoked nor expired) keys an organisation may hold at once.
pub const MAX_LIVE_KEYS: i64 = 100;
/// `last_used_at` is written at most this often per key, not on every request.
pub const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);

const HASH_KEY_LABEL: &[u8] = b"maintainpro api-key hashing key v1";

/// What an API key may do. Each scope lets a key call the endpoints listed with it, and
/// nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `GET /api/v1/work-orders`, `GET /api/v1/work-orders/{id}`.
    WorkOrdersRead,
    /// `POST /api/v1/work-orders`: a service or gateway reports a problem as a work order.
    WorkOrdersCreate,
    /// `GET /api/v1/alarms`.
    AlarmsRead,
    /// `POST /api/v1/alarms/{id}/acknowledge`, `POST` and `DELETE /api/v1/alarms/{id}/shelve`.
    AlarmsWrite,
    /// `GET /api/v1/rules/status`.
    RulesRead,
    /// `GET /api/v1/audit`, `GET /api/v1/audit/export`.
    AuditRead,
    /// No HTTP endpoint: the key is a gateway's broker login, allowed to publish readings on
    /// its organisation's topics ([`crate::broker_accounts`]).
    ReadingsPublish,
}

impl Scope {
    /// Every scope, in the order they are documented and listed.
    pub const ALL: [Scope; 7] = [
        Scope::WorkOrdersRead,
        Scope::WorkOrdersCreate,
        Scope::AlarmsRead,
        Scope::AlarmsWrite,
        Scope::RulesRead,
        Scope::AuditRead,
        Scope::ReadingsPublish,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::WorkOrdersRead => "work_orders:read",
            Scope::WorkOrdersCreate => "work_orders:create",
            Scope::AlarmsRead => "alarms:read",
            Scope::AlarmsWrite => "alarms:write",
            Scope::RulesRead => "rules:read",
            Scope::AuditRead => "audit:read",
            Scope::ReadingsPublish => "readings:publish",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scopes of a request: at least one, each known, each once (in the order of
/// [`Scope::ALL`]). The error names every unknown scope and lists the known ones.
pub fn parse_scopes(requested: &[String]) -> Result<Vec<Scope>, String> {
    let unknown: Vec<&str> = requested
        .iter()
        .map(String::as_str)
        .filter(|s| Scope::parse(s).is_none())
        .map(|s| s.get(..40).unwrap_or(s))
        .collect();
    let known = || {
        Scope::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !unknown.is_empty() {
        return Err(format!(
            "scopes: not a scope: {}; the scopes are {}",
            unknown.join(", "),
            known()
        ));
    }
    if requested.is_empty() {
        return Err(format!(
            "scopes: give at least one; the scopes are {}",
            known()
        ));
    }
    Ok(Scope::ALL
        .into_iter()
        .filter(|scope| requested.iter().any(|r| r == scope.as_str()))
        .collect())
}

/// Scopes as the database keeps them.
pub fn scope_names(scopes: &[Scope]) -> Vec<&'static str> {
    scopes.iter().map(|s| s.as_str()).collect()
}

/// A key's name, trimmed: 1 to [`MAX_NAME_CHARS`] characters, no control characters.
pub fn parse_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "name: give 1 to {MAX_NAME_CHARS} characters, e.g. \"gateway north hall\""
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name: no control characters (line breaks, tabs)".to_owned());
    }
    Ok(name.to_owned())
}

/// An expiry asked for at `now`: in the future and at most [`MAX_LIFETIME`] ahead.
pub fn check_expiry(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    let max = now + chrono::Duration::from_std(MAX_LIFETIME).expect("two years fit");
    if expires_at <= now || expires_at > max {
        return Err(format!(
            "expires_at: must be in the future and at most two years ahead (before {}); leave it out for a key that does not expire",
            max.format("%Y-%m-%dT%H:%M:%SZ")
        ));
    }
    Ok(())
}

/// The overlap of a rotation: from 0 (the old key stops at once) to [`MAX_OVERLAP`].
pub fn check_overlap(overlap: Duration) -> Result<(), String> {
    if overlap > MAX_OVERLAP {
        return Err(
            "overlap: at most 7 days (\"7d\"); the old key keeps working that long".to_owned(),
        );
    }
    Ok(())
}

/// The expiry of a rotated key's replacement: the one asked for, else the old key's lifetime
/// again from `now` (capped at [`MAX_LIFETIME`]), else none.
pub fn replacement_expiry(
    asked: Option<DateTime<Utc>>,
    old_created: DateTime<Utc>,
    old_expires: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let max = chrono::Duration::from_std(MAX_LIFETIME).expect("two years fit");
    asked.or_else(|| old_expires.map(|end| now + (end - old_created).min(max)))
}

/// The parts of a key as presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub tenant: Uuid,
    pub id: Uuid,
    /// The whole text, which is what is hashed.
    pub text: &'a str,
}

/// Whether a bearer token is meant as an API key (and not an access token).
pub fn looks_like_key(token: &str) -> bool {
    token.starts_with("mpak.")
}

/// The tenant and id of a well-formed key; `None` for anything else.
pub fn parse_key(text: &str) -> Option<PresentedKey<'_>> {
    parse_token(PREFIX, text)
}

/// As [`parse_key`], for any secret of the same shape under `prefix` (password-reset tokens
/// are `mprs.<tenant>.<id>.<secret>`).
pub fn parse_token<'a>(prefix: &str, text: &'a str) -> Option<PresentedKey<'a>> {
    if text.len() > MAX_KEY_CHARS {
        return None;
    }
    let mut parts = text.split('.');
    let (Some(head), Some(tenant), Some(id), Some(secret), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if head != prefix {
        return None;
    }
    let simple = |s: &str| {
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Uuid::try_parse(s).ok())
            .flatten()
    };
    let secret_ok = URL_SAFE_NO_PAD
        .decode(secret)
        .is_ok_and(|bytes| bytes.len() == SECRET_BYTES);
    if !secret_ok || secret.len() != SECRET_CHARS {
        return None;
    }
    Some(PresentedKey {
        tenant: simple(tenant)?,
        id: simple(id)?,
        text,
    })
}

/// Hashes keys under a key derived from the password pepper.
#[derive(Clone)]
pub struct ApiKeyHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for ApiKeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeyHasher(***)")
    }
}

impl ApiKeyHasher {
    #[must_use]
    pub fn new(pepper: &Secret) -> Self {
        Self {
            key: crate::mfa::derive(pepper.expose().as_bytes(), HASH_KEY_LABEL),
        }
    }

    /// What the database keeps of a key's text.
    #[must_use]
    pub fn hash(&self, text: &str) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(text.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `text` hashes to `stored`, compared in constant time.
    #[must_use]
    pub fn matches(&self, text: &str, stored: &[u8]) -> bool {
        bool::from(self.hash(text).as_slice().ct_eq(stored))
    }

    /// A new key of `tenant` with id `id`: its text, shown once, and its hash.
    #[must_use]
    pub fn new_key(&self, tenant: Uuid, id: Uuid) -> (String, [u8; 32]) {
        self.new_token(PREFIX, tenant, id)
    }

    /// A new secret of the keys' shape under `prefix` (see [`parse_token`]), and its hash.
    #[must_use]
    pub fn new_token(&self, prefix: &str, tenant: Uuid, id: Uuid) -> (String, [u8; 32]) {
        let mut secret = [0u8; SECRET_BYTES];
        OsRng.fill_bytes(&mut secret);
        let text = format!(
            "{prefix}.{}.{}.{}",
            tenant.simple(),
            id.simple(),
            URL_SAFE_NO_PAD.encode(secret)
        );
        let hash = self.hash(&text);
        (text, hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher(c: char) -> ApiKeyHasher {
        ApiKeyHasher::new(&Secret::new(c.to_string().repeat(32)))
    }

    #[test]
    fn keys_name_their_tenant_and_id_and_hash_under_the_pepper() {
        let (tenant, id) = (Uuid::new_v4(), Uuid::new_v4());
        let h = hasher('p');
        let (text, hash) = h.new_key(tenant, id);
        assert!(looks_like_key(&text));
        assert_eq!(text.len(), MAX_KEY_CHARS);
        let parsed = parse_key(&text).expect("a new key parses");
        assert_eq!(
            (parsed.tenant, parsed.id, parsed.text),
            (tenant, id, &*text)
        );
        assert!(h.matches(&text, &hash));
        assert!(!hasher('q').matches(&text, &hash), "another pepper");
        let (other, _) = h.new_key(tenant, id);
        assert_ne!(other, text, "random");
        assert!(!h.matches(&other, &hash));
        assert!(!h.matches(&text, &hash[..31]), "a truncated hash");
    }

    #[test]
    fn nothing_else_parses_as_a_key() {
        let (text, _) = hasher('p').new_key(Uuid::new_v4(), Uuid::new_v4());
        let upper = text.replacen(&text[5..37], &text[5..37].to_uppercase(), 1);
        let hyphenated = format!("mpak.{}.{}", Uuid::new_v4().hyphenated(), &text[5 + 33..]);
        for bad in [
            "",
            "mpak",
            "mpak...",
            &format!("mprt.{}", &text[5..]),
            &format!("{text}.extra"),
            &format!("{text}A"),
            &text[..text.len() - 1],
            &format!("{}!", &text[..text.len() - 1]),
            &upper,
            &hyphenated,
            &"mpak.".repeat(40),
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn scopes_are_known_deduplicated_and_ordered() {
        let ask =
            |list: &[&str]| parse_scopes(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ask(&["alarms:write", "work_orders:read", "alarms:write"]),
            Ok(vec![Scope::WorkOrdersRead, Scope::AlarmsWrite])
        );
        let err = ask(&["alarms:write", "readings:delete", "admin"]).unwrap_err();
        assert!(
            err.starts_with("scopes: not a scope: readings:delete, admin;"),
            "{err}"
        );
        assert!(
            err.contains("work_orders:read, work_orders:create, alarms:read"),
            "{err}"
        );
        assert!(ask(&[]).unwrap_err().contains("at least one"));
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
    }

    #[test]
    fn names_expiries_and_overlaps_are_checked() {
        assert_eq!(
            parse_name("  gateway north  ").as_deref(),
            Ok("gateway north")
        );
        for bad in ["", "   ", "a\nb", &"x".repeat(101)] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        assert!(check_expiry(now + day, now).is_ok());
        assert!(check_expiry(now + day * 730, now).is_ok());
        for bad in [now, now - day, now + day * 731] {
            assert!(check_expiry(bad, now).is_err(), "{bad}");
        }
        assert!(check_overlap(Duration::ZERO).is_ok());
        assert!(check_overlap(MAX_OVERLAP).is_ok());
        assert!(check_overlap(MAX_OVERLAP + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_replacement_keeps_the_old_lifetime_unless_told() {
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let created = now - day * 10;
        assert_eq!(
            replacement_expiry(None, created, Some(created + day * 30), now),
            Some(now + day * 30)
        );
        assert_eq!(replacement_expiry(None, created, None, now), None);
        assert_eq!(
            replacement_expiry(Some(now + day), created, None, now),
            Some(now + day)
        );
    }
}
