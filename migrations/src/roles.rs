//! The two MaintAInPro roles: their attributes, their passwords and the statements that create
//! or update them.
//!
//! Passwords never reach the server in clear: `CREATE ROLE` cannot take bind parameters, and a
//! clear password inside the statement text would end up in the server log (`log_statement`),
//! in `pg_stat_statements` and in `pg_stat_activity`. Like psql's `\password`, the role
//! statements carry a SCRAM-SHA-256 verifier computed here instead.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::error::DbError;
use crate::sql::{quote_ident, quote_literal};
use crate::{APP_ROLE, OWNER_ROLE};

/// The passwords of the two roles, set by [`bootstrap`](crate::bootstrap) every time it runs.
///
/// Both roles are shared by every MaintAInPro database of a cluster, so bootstrapping one
/// database sets the passwords for all of them.
#[derive(Clone, PartialEq, Eq)]
pub struct RoleSecrets {
    /// The password of [`OWNER_ROLE`].
    pub owner_password: String,
    /// The password of [`APP_ROLE`].
    pub app_password: String,
}

impl fmt::Debug for RoleSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleSecrets")
            .field("owner_password", &format_args!("<redacted>"))
            .field("app_password", &format_args!("<redacted>"))
            .finish()
    }
}

impl RoleSecrets {
    pub(crate) fn check(&self) -> Result<(), DbError> {
        check_password(OWNER_ROLE, &self.owner_password)?;
        check_password(APP_ROLE, &self.app_password)
    }
}

fn check_password(role: &'static str, password: &str) -> Result<(), DbError> {
    let reason = if password.is_empty() {
        // PostgreSQL stores an empty password as none at all, and the role could not log in.
        "is empty"
    } else if password.contains('\0') {
        "contains a NUL byte, which no PostgreSQL client can send"
    } else {
        return Ok(());
    };
    Err(DbError::InvalidPassword { role, reason })
}

/// A role and the attributes bootstrap enforces on it, whether it creates it or finds it.
struct RoleSpec<'a> {
    name: &'static str,
    attributes: &'static str,
    password: &'a str,
}

/// Creates or updates both roles.
///
/// Several bootstraps of one cluster may run at once (one per test database, say). They
/// serialise on an advisory lock; bootstraps whose admin URLs name different databases do not
/// share that lock, so a lost race on `CREATE ROLE` (duplicate_object, unique_violation) or on
/// updating the same catalog row is retried on the `ALTER ROLE` path.
pub(crate) async fn ensure_roles(
    conn: &mut PgConnection,
    secrets: &RoleSecrets,
) -> Result<(), DbError> {
    let roles = [
        RoleSpec {
            name: OWNER_ROLE,
            attributes: "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION",
            password: &secrets.owner_password,
        },
        // NOINHERIT: should anyone ever grant the app role membership in the owner role, it
        // still would not get the owner's rights without an explicit SET ROLE.
        RoleSpec {
            name: APP_ROLE,
            attributes: "LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT NOCREATEROLE NOCREATEDB NOREPLICATION",
            password: &secrets.app_password,
        },
    ];
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match ensure_roles_once(conn, &roles).await {
            Ok(()) => return Ok(()),
            Err(DbError::Statement { what, source })
                if attempt < ATTEMPTS && lost_race(&source) =>
            {
                tracing::debug!(%what, error = %source, attempt, "concurrent role change; retrying");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn ensure_roles_once(conn: &mut PgConnection, roles: &[RoleSpec<'_>]) -> Result<(), DbError> {
    let mut tx = conn
        .begin()
        .await
        .map_err(DbError::statement("starting the role transaction"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROLE_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(DbError::statement("taking the role advisory lock"))?;
    for role in roles {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role.name)
                .fetch_one(&mut *tx)
                .await
                .map_err(DbError::statement(format!("looking up role {}", role.name)))?;
        let verb = if exists { "ALTER" } else { "CREATE" };
        let verifier = scram_sha256_verifier(role.password, Uuid::new_v4().as_bytes());
        let statement = format!(
            "{verb} ROLE {} WITH {} PASSWORD {}",
            quote_ident(role.name).expect("role names are constants without NUL bytes"),
            role.attributes,
            quote_literal(&verifier).expect("a SCRAM verifier is base64 and ASCII punctuation"),
        );
        // raw_sql: no prepared statement, so the verifier is not kept in the statement cache.
        sqlx::raw_sql(&statement)
            .execute(&mut *tx)
            .await
            .map_err(DbError::statement(format!(
                "{} role {}",
                if exists { "updating" } else { "creating" },
                role.name
            )))?;
    }
    tx.commit()
        .await
        .map_err(DbError::statement("committing the role changes"))
}

/// Key of the advisory lock that serialises role changes: "MPRoles" in ASCII, so it is
/// recognisable in pg_locks.
const ROLE_LOCK_KEY: i64 = 0x004D_5052_6F6C_6573;

/// Whether `error` means another session changed the same role at the same time.
fn lost_race(error: &sqlx::Error) -> bool {
    let Some(db) = error.as_database_error() else {
        return false;
    };
    match db.code().as_deref() {
        // duplicate_object, unique_violation: the role was created concurrently.
        Some("42710" | "23505") => true,
        // Two concurrent updates of one pg_authid row.
        Some("XX000") => db.message().contains("tuple concurrently updated"),
        _ => false,
    }
}

/// PostgreSQL's default SCRAM iteration count (`scram_iterations`).
const SCRAM_ITERATIONS: u32 = 4096;

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, RFC 7677), in the
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` form `CREATE ROLE` accepts.
///
/// The password is used as its UTF-8 bytes without SASLprep, as sqlx's client does when it
/// logs in, so every password sqlx can send works. (For printable ASCII passwords SASLprep
/// changes nothing and libpq clients log in too.)
pub(crate) fn scram_sha256_verifier(password: &str, salt: &[u8]) -> String {
    let salted = pbkdf2_hmac_sha256(password.as_bytes(), salt, SCRAM_ITERATIONS);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output, i.e. a single block: SCRAM's `Hi()`.
fn pbkdf2_hmac_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mac =
        <Hmac<Sha256> as Mac>::new_from_slice(password).expect("HMAC accepts keys of any length");
    let mut first = mac.clone();
    first.update(salt);
    first.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = first.finalize().into_bytes().into();
    let mut result = u;
    for _ in 1..iterations {
        let mut next = mac.clone();
        next.update(&u);
        u = next.finalize().into_bytes().into();
        for (r, b) in result.iter_mut().zip(u) {
            *r ^= b;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verifiers PostgreSQL 15 itself stored for these passwords with
    /// `password_encryption = 'scram-sha-256'`; computing them again from the same salt must
    /// give the same text.
    #[test]
    fn verifiers_match_postgresql() {
        let cases = [
            (
                "pencil",
                "SCRAM-SHA-256$4096:o9JuNe0mKST5fy/c5tlsAA==$jPj/srgQqGnXCdj2dxjRE6tahT554feNTmz/tGFgDR0=:/7qaQJVUBsw6fQktyax43FXuCTCmhVLu5/dxxXDHKos=",
            ),
            (
                "it's a p@ss/word:%41",
                "SCRAM-SHA-256$4096:xfdnZZWHm8tHn0Gozy8hxg==$b00RR0rgvKxi52qUagXL3NSdO36Lr0kWQ+Tcl4v8AA0=:GFX19nVrWAOtlxXZKDAvLBYD4cSLpfelsNJP4s06UZM=",
            ),
        ];
        for (password, stored) in cases {
            let salt_b64 = stored
                .split(['$', ':'])
                .nth(2)
                .expect("the fixture has a salt");
            let salt = BASE64
                .decode(salt_b64)
                .expect("the fixture's salt is base64");
            assert_eq!(
                scram_sha256_verifier(password, &salt),
                stored,
                "{password:?}"
            );
        }
    }

    #[test]
    fn debug_hides_passwords() {
        let secrets = RoleSecrets {
            owner_password: "owner-secret".to_owned(),
            app_password: "app-secret".to_owned(),
        };
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn empty_and_nul_passwords_are_rejected() {
        let good = RoleSecrets {
            owner_password: "o".to_owned(),
            app_password: "a".to_owned(),
        };
        assert!(good.check().is_ok());
        let empty = RoleSecrets {
            owner_password: String::new(),
            ..good.clone()
        };
        assert!(matches!(
            empty.check(),
            Err(DbError::InvalidPassword {
                role: OWNER_ROLE,
                ..
            })
        ));
        let nul = RoleSecrets {
            app_password: "a\0b".to_owned(),
            ..good
        };
        assert!(matches!(
            nul.check(),
            Err(DbError::InvalidPassword { role: APP_ROLE, .. })
        ));
    }
}
