//! Tenants and users: creating them, setting passwords under the policy, disabling. Used by
//! `maintainpro admin` to bootstrap the first tenant and admin, and by the API.
//!
//! Every change is audited in its own transaction. Setting a password, disabling a user or
//! resetting a user's MFA ends the user's sessions; a user changing their own password ends
//! their other sessions. Setting a password never touches MFA: a new password does not get
//! anyone past the second factor.

use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::password::{
    PasswordContext, PasswordError, PasswordHasher, PasswordPolicy, PolicyViolation,
};
use crate::sessions::{self, EndReason};

/// The built-in roles.
pub const ROLES: &[&str] = &["admin", "manager", "technician", "requester", "viewer"];

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "organisation slug {0:?} is not valid: use 2-63 lower-case letters, digits and `-`, starting with a letter or digit"
    )]
    BadSlug(String),
    #[error("an organisation with slug {0:?} exists already")]
    TenantExists(String),
    #[error("no organisation has slug {0:?}")]
    UnknownTenant(String),
    #[error(
        "role {0:?} is not a role: use admin, manager, technician, requester, viewer, or a custom role's name (2-40 lower-case letters, digits, `-`, `_`)"
    )]
    BadRole(String),
    #[error(
        "the organisation has no custom role {0:?}; create it first (POST /api/v1/roles) or use a built-in role"
    )]
    UnknownRole(String),
    #[error(
        "this is the organisation's last enabled admin; make another user admin first, or keep this one"
    )]
    LastAdmin,
    #[error("{0:?} is not an email address")]
    BadEmail(String),
    #[error("a user with email {0:?} exists already in this organisation")]
    UserExists(String),
    #[error("no user with email {0:?} in this organisation")]
    UnknownUser(String),
    #[error("the password does not meet the policy:\n{}", .0.iter().map(|v| format!("  - {v}")).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<PolicyViolation>),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

fn valid_slug(slug: &str) -> bool {
    let b = slug.as_bytes();
    (2..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    (3..=320).contains(&email.len())
        && !local.is_empty()
        && domain.contains('.')
        && !email.chars().any(char::is_whitespace)
}

/// The tenant id of `slug`.
pub async fn tenant_by_slug(pool: &PgPool, slug: &str) -> Result<Uuid, UserError> {
    sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1")
        .bind(slug)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| UserError::UnknownTenant(slug.to_owned()))
}

/// The user id of `email` in `tenant`.
pub async fn user_by_email(pool: &PgPool, tenant: Uuid, email: &str) -> Result<Uuid, UserError> {
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let id = sqlx::query_scalar(
        "SELECT id FROM users WHERE tenant_id = $1 AND lower(email) = lower($2)",
    )
    .bind(tenant)
    .bind(email)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    id.ok_or_else(|| UserError::UnknownUser(email.to_owned()))
}

/// Checks a new password against the policy, every violation at once.
pub fn check_password(password: &str, email: &str, slug: &str) -> Result<(), UserError> {
    let violations = PasswordPolicy.check(
        password,
        &PasswordContext {
            email: Some(email),
            tenant_slug: Some(slug),
        },
    );
    if violations.is_empty() {
        Ok(())
    } else {
        Err(UserError::Policy(violations))
    }
}

/// A new user: what to create.
#[derive(Debug, Clone, Copy)]
pub struct NewUser<'a> {
    pub email: &'a str,
    pub display_name: &'a str,
    pub role: &'a str,
    pub password: &'a str,
}

/// Creates an organisation and its first admin in one transaction.
pub async fn create_tenant(
    pool: &PgPool,
    hasher: &PasswordHasher,
    slug: &str,
    name: &str,
    admin: NewUser<'_>,
    meta: &RequestMeta,
) -> Result<(Uuid, Uuid), UserError> {
    if !valid_slug(slug) {
        return Err(UserError::BadSlug(slug.to_owned()));
    }
    validate(&admin, slug)?;
    let hash = hash_blocking(hasher, admin.password).await?;
    let tenant = Uuid::new_v4();
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let inserted = sqlx::query(
        "INSERT INTO tenants (id, slug, name) VALUES ($1, $2, $3) ON CONFLICT (slug) DO NOTHING",
    )
    .bind(tenant)
    .bind(slug)
    .bind(name)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(UserError::TenantExists(slug.to_owned()));
    }
    let user = insert_user(&mut tx, tenant, &admin, &hash).await?;
    audit::write(
        &mut tx,
        &Entry::new(Some(tenant), None, "tenant.create", Outcome::Success)
            .target("tenant", tenant)
            .detail(serde_json::json!({ "slug": slug, "admin": user })),
        meta,
    )
    .await?;
    tx.commit().await?;
    Ok((tenant, user))
}

/// Creates a user in `tenant` (`slug` is its slug, for the password policy).
pub async fn create_user(
    pool: &PgPool,
    hasher: &PasswordHasher,
    tenant: Uuid,
    slug: &str,
    new: NewUser<'_>,
    actor: Option<Uuid>,
    meta: &RequestMeta,
) -> Result<Uuid, UserError> {
    validate(&new, slug)?;
    let hash = hash_blocking(hasher, new.password).await?;
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    require_role(&mut tx, tenant, new.role).await?;
    let user = insert_user(&mut tx, tenant, &new, &hash).await?;
    audit::write(
        &mut tx,
        &Entry::new(Some(tenant), actor, "user.create", Outcome::Success)
            .target("user", user)
            .detail(serde_json::json!({ "role": new.role })),
        meta,
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// A new random password (18 random bytes, URL-safe base64): for a user whose first password
/// is shown once.
pub fn generate_password() -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    use base64::Engine as _;
    let mut bytes = [0u8; 18];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A role's name is a built-in role's or may be a custom role's.
fn check_role_name(role: &str) -> Result<(), UserError> {
    if ROLES.contains(&role) || crate::permissions::valid_custom_role_name(role) {
        Ok(())
    } else {
        Err(UserError::BadRole(role.chars().take(60).collect()))
    }
}

/// A role that is not built in must be one of the organisation's custom roles.
async fn require_role(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    role: &str,
) -> Result<(), UserError> {
    if ROLES.contains(&role) {
        return Ok(());
    }
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM custom_roles WHERE tenant_id = $1 AND name = $2)",
    )
    .bind(tenant)
    .bind(role)
    .fetch_one(conn)
    .await?;
    if exists {
        Ok(())
    } else {
        Err(UserError::UnknownRole(role.to_owned()))
    }
}

/// Gives `user` the role `role` (built in, or a custom role of the organisation) and answers
/// the role it had. The change holds from the user's next request; it is audited
/// (`user.role_change`, with both roles).
pub async fn set_role(
    pool: &PgPool,
    tenant: Uuid,
    user: Uuid,
    role: &str,
    actor: Option<Uuid>,
    meta: &RequestMeta,
) -> Result<String, UserError> {
    check_role_name(role)?;
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let before: Option<String> =
        sqlx::query_scalar("SELECT role FROM users WHERE tenant_id = $1 AND id = $2 FOR UPDATE")
            .bind(tenant)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
    let before = before.ok_or_else(|| UserError::UnknownUser(user.to_string()))?;
    require_role(&mut tx, tenant, role).await?;
    if before == "admin" && role != "admin" {
        // Locks the admins, so two demotions at once cannot both pass.
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM users
                                   WHERE tenant_id = $1 AND role = 'admin' AND NOT disabled
                                     AND id <> $2 FOR UPDATE) a",
        )
        .bind(tenant)
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        if others == 0 {
            return Err(UserError::LastAdmin);
        }
    }
    sqlx::query("UPDATE users SET role = $3 WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(user)
        .bind(role)
        .execute(&mut *tx)
        .await?;
    audit::write(
        &mut tx,
        &Entry::new(Some(tenant), actor, "user.role_change", Outcome::Success)
            .target("user", user)
            .detail(serde_json::json!({ "before": before, "after": role })),
        meta,
    )
    .await?;
    tx.commit().await?;
    Ok(before)
}

/// A user of an organisation, with the organisation's slug (the password policy reads it).
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    pub tenant: Uuid,
    pub slug: &'a str,
    pub user: Uuid,
}

/// Sets a user's password (policy checked) and ends the user's sessions.
pub async fn set_password(
    pool: &PgPool,
    hasher: &PasswordHasher,
    account: Account<'_>,
    password: &str,
    actor: Option<Uuid>,
    meta: &RequestMeta,
) -> Result<u64, UserError> {
    let Account { tenant, slug, user } = account;
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let email: String =
        sqlx::query_scalar("SELECT email FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| UserError::UnknownUser(user.to_string()))?;
    check_password(password, &email, slug)?;
    let hash = hash_blocking(hasher, password).await?;
    sqlx::query("UPDATE users SET password_hash = $3 WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(user)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    let ended = end_sessions_audited(
        &mut tx,
        Change {
            tenant,
            user,
            actor,
            action: "user.password_set",
        },
        Some(EndReason::RevokedByAdmin),
        meta,
    )
    .await?;
    tx.commit().await?;
    Ok(ended)
}

/// Disables or enables a user; disabling ends the user's sessions. Returns the sessions ended.
pub async fn set_disabled(
    pool: &PgPool,
    tenant: Uuid,
    user: Uuid,
    disabled: bool,
    actor: Option<Uuid>,
    meta: &RequestMeta,
) -> Result<u64, UserError> {
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    if disabled {
        // Locks the enabled admins, so two disablings at once cannot both pass.
        let admins: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM users WHERE tenant_id = $1 AND role = 'admin' AND NOT disabled
             FOR UPDATE",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        if admins == [user] {
            return Err(UserError::LastAdmin);
        }
    }
    let n = sqlx::query("UPDATE users SET disabled = $3 WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(user)
        .bind(disabled)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(UserError::UnknownUser(user.to_string()));
    }
    let (action, reason) = if disabled {
        ("user.disable", Some(EndReason::UserDisabled))
    } else {
        ("user.enable", None)
    };
    let change = Change {
        tenant,
        user,
        actor,
        action,
    };
    let ended = end_sessions_audited(&mut tx, change, reason, meta).await?;
    tx.commit().await?;
    Ok(ended)
}

/// Ends every session of a user. Returns how many.
pub async fn revoke_sessions(
    pool: &PgPool,
    tenant: Uuid,
    user: Uuid,
    actor: Option<Uuid>,
    meta: &RequestMeta,
) -> Result<u64, UserError> {
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let change = Change {
        tenant,
        user,
        actor,
        action: "session.revoke_user",
    };
    let ended =
        end_sessions_audited(&mut tx, change, Some(EndReason::RevokedByAdmin), meta).await?;
    tx.commit().await?;
    Ok(ended)
}

/// Sets the password of the user whose reset `reset` is, if that reset is still unused and
/// unexpired (checked again here, under a lock, so that two uses of one token set one
/// password): policy checked, every other reset of the user retired, every session ended,
/// audited as `auth.password_reset`. `None` when the reset is no longer usable.
pub async fn complete_reset(
    pool: &PgPool,
    hasher: &PasswordHasher,
    tenant: Uuid,
    slug: &str,
    reset: Uuid,
    password: &str,
    meta: &RequestMeta,
) -> Result<Option<u64>, UserError> {
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let found: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT u.id, u.email FROM password_resets r JOIN users u ON u.id = r.user_id
         WHERE r.tenant_id = $1 AND r.id = $2 AND r.used_at IS NULL AND r.expires_at > now()
           AND NOT u.disabled AND u.erased_at IS NULL
         FOR UPDATE OF r",
    )
    .bind(tenant)
    .bind(reset)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user, email)) = found else {
        return Ok(None);
    };
    check_password(password, &email, slug)?;
    let hash = hash_blocking(hasher, password).await?;
    sqlx::query("UPDATE users SET password_hash = $3 WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(user)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE password_resets SET used_at = now()
         WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL",
    )
    .bind(tenant)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    let change = Change {
        tenant,
        user,
        actor: Some(user),
        action: "auth.password_reset",
    };
    let ended = end_sessions_audited(&mut tx, change, Some(EndReason::RevokedByUser), meta).await?;
    tx.commit().await?;
    Ok(Some(ended))
}

/// What erasing a user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erased {
    pub sessions_ended: u64,
    /// Audit and notification rows whose personal data was removed.
    pub trail_rows: i64,
}

/// Erases a user's personal data and keeps their references (GDPR art. 17): the user row
/// stays, disabled, under a pseudonym (`Erased user`, `erased-<id>@erased.invalid`) with no
/// usable password and no MFA; their sessions end and lose their client address and user
/// agent; the audit and notification logs lose the addresses and email they held about them
/// (`erase_user_trail`). Work orders, events, time logs and audit entries keep pointing at
/// the same id. `None` if the user does not exist or was erased already. One transaction.
pub async fn erase(
    pool: &PgPool,
    tenant: Uuid,
    user: Uuid,
    actor: Option<Uuid>,
    meta: &RequestMeta,
) -> Result<Option<Erased>, UserError> {
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let email: Option<String> = sqlx::query_scalar(
        "SELECT email FROM users WHERE tenant_id = $1 AND id = $2 AND erased_at IS NULL
         FOR UPDATE",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(email) = email else {
        return Ok(None);
    };
    let pseudonym = format!("erased-{}@erased.invalid", user.simple());
    sqlx::query(
        "UPDATE users SET email = $3, display_name = 'Erased user', password_hash = '!erased',
                          disabled = true, erased_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(user)
    .bind(&pseudonym)
    .execute(&mut *tx)
    .await?;
    remove_mfa(&mut tx, tenant, user).await?;
    let change = Change {
        tenant,
        user,
        actor,
        action: "user.erase",
    };
    let sessions_ended =
        end_sessions_audited(&mut tx, change, Some(EndReason::UserDisabled), meta).await?;
    sqlx::query(
        "UPDATE sessions SET ip = NULL, user_agent = NULL WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(tenant)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    let trail_rows: i64 = sqlx::query_scalar("SELECT erase_user_trail($1, $2, $3)")
        .bind(user)
        .bind(&email)
        .bind(&pseudonym)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(Erased {
        sessions_ended,
        trail_rows,
    }))
}

/// Removes a user's MFA (secret and recovery codes), in the caller's transaction.
pub async fn remove_mfa(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    user: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    let removed = sqlx::query("DELETE FROM user_mfa WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(removed == 1)
}

/// An admin's reset of a user's MFA (a lost authenticator): removes it and ends the user's
/// sessions. Returns the sessions ended.
pub async fn reset_mfa(
    pool: &PgPool,
    tenant: Uuid,
    user: Uuid,
    actor: Option<Uuid>,
    meta: &RequestMeta,
) -> Result<u64, UserError> {
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    remove_mfa(&mut tx, tenant, user).await?;
    let change = Change {
        tenant,
        user,
        actor,
        action: "user.mfa_reset",
    };
    let ended =
        end_sessions_audited(&mut tx, change, Some(EndReason::RevokedByAdmin), meta).await?;
    tx.commit().await?;
    Ok(ended)
}

/// A user's change of their own password to `hash` (checked and hashed by the caller), in
/// the caller's transaction: every other session of the user ends, `current` stays. Returns
/// the sessions ended.
pub async fn set_own_password(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    user: Uuid,
    hash: &str,
    current: Uuid,
    meta: &RequestMeta,
) -> Result<u64, UserError> {
    sqlx::query("UPDATE users SET password_hash = $3 WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(user)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    let ended = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $4
         WHERE tenant_id = $1 AND user_id = $2 AND id <> $3 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .bind(user)
    .bind(current)
    .bind(EndReason::RevokedByUser.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    audit::write(
        tx,
        &Entry::new(
            Some(tenant),
            Some(user),
            "auth.password_change",
            Outcome::Success,
        )
        .target("user", user)
        .detail(serde_json::json!({ "sessions_ended": ended })),
        meta,
    )
    .await?;
    Ok(ended)
}

/// A change to a user: whose, by whom, and its audit action.
#[derive(Debug, Clone, Copy)]
struct Change<'a> {
    tenant: Uuid,
    user: Uuid,
    actor: Option<Uuid>,
    action: &'a str,
}

/// Ends the user's sessions for `reason` (none: ends nothing) and audits `change` with the
/// number ended, in the caller's transaction.
async fn end_sessions_audited(
    tx: &mut sqlx::PgConnection,
    change: Change<'_>,
    reason: Option<EndReason>,
    meta: &RequestMeta,
) -> Result<u64, UserError> {
    let Change {
        tenant,
        user,
        actor,
        action,
    } = change;
    let ended = match reason {
        Some(reason) => sessions::end_all_of_user(&mut *tx, tenant, user, reason).await?,
        None => 0,
    };
    audit::write(
        tx,
        &Entry::new(Some(tenant), actor, action, Outcome::Success)
            .target("user", user)
            .detail(serde_json::json!({ "sessions_ended": ended })),
        meta,
    )
    .await?;
    Ok(ended)
}

/// Whether work may be assigned to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignable {
    Yes,
    /// No such user in the organisation.
    Unknown,
    Disabled,
    /// The user's role (named) allows neither `work_orders:work` nor `work_orders:supervise`.
    NotAWorker(String),
}

/// Whether work may be assigned to `user`: an enabled user whose role may work on or
/// supervise work orders.
pub async fn assignable(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    user: Uuid,
) -> Result<Assignable, sqlx::Error> {
    let row: Option<(String, bool, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT u.role, u.disabled, r.permissions FROM users u
         LEFT JOIN custom_roles r ON r.tenant_id = u.tenant_id AND r.name = u.custom_role
         WHERE u.tenant_id = $1 AND u.id = $2",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        None => Assignable::Unknown,
        Some((_, true, _)) => Assignable::Disabled,
        Some((role, false, custom)) => {
            if crate::sessions::role_permissions(&role, custom.as_deref()).can_be_assigned() {
                Assignable::Yes
            } else {
                Assignable::NotAWorker(role)
            }
        }
    })
}

fn validate(new: &NewUser<'_>, slug: &str) -> Result<(), UserError> {
    check_role_name(new.role)?;
    if !valid_email(new.email) {
        return Err(UserError::BadEmail(new.email.to_owned()));
    }
    check_password(new.password, new.email, slug)
}

/// Argon2 takes tens of milliseconds: off the async workers.
async fn hash_blocking(hasher: &PasswordHasher, password: &str) -> Result<String, UserError> {
    let (hasher, password) = (hasher.clone(), password.to_owned());
    tokio::task::spawn_blocking(move || hasher.hash(&password))
        .await
        .map_err(|e| UserError::Database(sqlx::Error::Io(std::io::Error::other(e))))?
        .map_err(UserError::from)
}

async fn insert_user(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    new: &NewUser<'_>,
    hash: &str,
) -> Result<Uuid, UserError> {
    // Logins match emails case-insensitively, so must uniqueness.
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users WHERE tenant_id = $1 AND lower(email) = lower($2))",
    )
    .bind(tenant)
    .bind(new.email)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        return Err(UserError::UserExists(new.email.to_owned()));
    }
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO users (id, tenant_id, email, display_name, password_hash, role)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, email) DO NOTHING",
    )
    .bind(id)
    .bind(tenant)
    .bind(new.email)
    .bind(new.display_name)
    .bind(hash)
    .bind(new.role)
    .execute(tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(UserError::UserExists(new.email.to_owned()));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_emails() {
        for good in ["ab", "plant-a", "acme-2026"] {
            assert!(valid_slug(good), "{good}");
        }
        for bad in ["a", "-ab", "Acme", "a b", "a_b", &"a".repeat(64)] {
            assert!(!valid_slug(bad), "{bad}");
        }
        assert!(valid_email("admin@demo.local"));
        for bad in ["admin", "@demo.local", "a@b", "a b@c.d"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
