//! [`bootstrap`]: everything about a MaintAInPro database that needs a superuser, done once
//! before the first migration and safe to repeat. It never creates tables: the migrations do,
//! as the owner, so that the owner owns them.

use sqlx::PgConnection;

use crate::error::DbError;
use crate::roles::{RoleSecrets, ensure_roles};
use crate::sql::quote_ident;
use crate::urls::{AdminUrl, DatabaseUrls, connect};
use crate::{APP_ROLE, OWNER_ROLE};

/// A database name bootstrap accepts: `^[a-z_][a-z0-9_]{0,62}$`, so it never needs quoting
/// in a URL and PostgreSQL keeps it as written (at most 63 bytes, no case folding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DatabaseName(String);

impl DatabaseName {
    pub(crate) fn parse(name: &str) -> Result<Self, DbError> {
        let mut bytes = name.bytes();
        let valid = bytes
            .next()
            .is_some_and(|first| first.is_ascii_lowercase() || first == b'_')
            && name.len() <= 63
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(DbError::InvalidDatabaseName {
                name: name.to_owned(),
            })
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    fn quoted(&self) -> String {
        quote_ident(&self.0).expect("a parsed database name has no NUL byte")
    }
}

/// Prepares database `db_name` on the server of `admin_url` (a superuser's URL to any of its
/// databases) and returns the URLs the owner and the app log in with.
///
/// In order, each step skipped when already done:
/// 1. creates [`OWNER_ROLE`] and [`APP_ROLE`], or updates them to the attributes MaintAInPro
///    relies on (LOGIN, no superuser, no BYPASSRLS), and sets their passwords from `secrets`
///    (both roles are shared by every MaintAInPro database of the cluster);
/// 2. creates the database, owned by [`OWNER_ROLE`]; an existing database of another owner is
///    an error, never taken over;
/// 3. in the database, tries `CREATE EXTENSION timescaledb`; where the server does not have
///    it, or has only its Apache-2 edition (no compression), readings will use native daily
///    partitions;
/// 4. allows only the app role (and the owner) to connect, and only the owner to create
///    objects in schema `public`.
///
/// Running it again on the same database changes nothing but the role passwords, and
/// bootstraps of different databases of one cluster may run concurrently.
#[tracing::instrument(skip_all, fields(database = db_name))]
pub async fn bootstrap(
    admin_url: &str,
    db_name: &str,
    secrets: &RoleSecrets,
) -> Result<DatabaseUrls, DbError> {
    let name = DatabaseName::parse(db_name)?;
    secrets.check()?;
    let admin = AdminUrl::parse(admin_url)?;
    let urls = DatabaseUrls {
        owner_url: admin.derive(OWNER_ROLE, &secrets.owner_password, name.as_str())?,
        app_url: admin.derive(APP_ROLE, &secrets.app_password, name.as_str())?,
    };

    let mut conn = connect(admin.options()).await?;
    require_superuser(&mut conn).await?;
    ensure_roles(&mut conn, secrets).await?;
    ensure_database(&mut conn, &name).await?;
    close(conn).await;

    let mut conn = connect(&admin.options_for(name.as_str())).await?;
    try_timescaledb(&mut conn).await;
    close(conn).await;
    // A fresh session: TimescaleDB ends the one that tried it when its library is not
    // preloaded.
    let mut conn = connect(&admin.options_for(name.as_str())).await?;
    restrict_access(&mut conn, &name).await?;
    close(conn).await;

    tracing::info!("database {} is ready for migrations", name.as_str());
    Ok(urls)
}

async fn require_superuser(conn: &mut PgConnection) -> Result<(), DbError> {
    let (role, superuser): (String, bool) =
        sqlx::query_as("SELECT rolname::text, rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut *conn)
            .await
            .map_err(DbError::statement("checking the admin role"))?;
    if superuser {
        Ok(())
    } else {
        Err(DbError::NotSuperuser { role })
    }
}

async fn database_owner(
    conn: &mut PgConnection,
    name: &DatabaseName,
) -> Result<Option<String>, DbError> {
    sqlx::query_scalar("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1")
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(DbError::statement(format!(
            "looking up database {}",
            name.as_str()
        )))
}

async fn ensure_database(conn: &mut PgConnection, name: &DatabaseName) -> Result<(), DbError> {
    if database_owner(conn, name).await?.is_none() {
        let statement = format!(
            "CREATE DATABASE {} OWNER {}",
            name.quoted(),
            quote_ident(OWNER_ROLE).expect("role names are constants without NUL bytes")
        );
        match sqlx::raw_sql(&statement).execute(&mut *conn).await {
            Ok(_) => tracing::info!("created database {}", name.as_str()),
            // duplicate_database: a concurrent bootstrap of the same name won; its owner is
            // checked below like any existing database's.
            Err(e) if sql_state(&e).as_deref() == Some("42P04") => {}
            Err(e) => {
                return Err(DbError::statement(format!(
                    "creating database {}",
                    name.as_str()
                ))(e));
            }
        }
    }
    match database_owner(conn, name).await? {
        Some(owner) if owner == OWNER_ROLE => Ok(()),
        Some(owner) => Err(DbError::DatabaseOwnedByOtherRole {
            name: name.as_str().to_owned(),
            owner,
            expected: OWNER_ROLE,
        }),
        None => Err(DbError::statement(format!(
            "finding database {} right after creating it (was it dropped concurrently?)",
            name.as_str()
        ))(sqlx::Error::RowNotFound)),
    }
}

/// Installs TimescaleDB when the server has it. Its absence is the ordinary case on a plain
/// PostgreSQL and never an error: the readings migration then uses native partitions. So is
/// its Apache-2 edition (what Debian and several cloud services ship): it has hypertables but
/// not the compression and retention policies the readings migration sets, so the extension
/// is left out again, unless readings were already migrated with it.
async fn try_timescaledb(conn: &mut PgConnection) {
    match sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .execute(&mut *conn)
        .await
    {
        Ok(_) => match timescaledb_license(conn).await {
            Ok(Some(license)) if license != COMMUNITY_LICENSE => {
                leave_out_timescaledb(conn, &license).await
            }
            // The Community edition, or one whose library this session has not loaded (the
            // extension was there before): `migrate` checks again.
            Ok(_) => {
                tracing::info!("timescaledb extension installed: readings will be a hypertable")
            }
            Err(e) => tracing::warn!(error = %e, "reading timescaledb.license failed"),
        },
        // feature_not_supported ("is not available", PostgreSQL 15+) and undefined_file
        // (no control file, older servers): the server does not have the extension.
        Err(e) if matches!(sql_state(&e).as_deref(), Some("0A000" | "58P01")) => tracing::info!(
            "timescaledb is not available on this server: readings will use native daily partitions"
        ),
        // Installed but unusable, typically missing from shared_preload_libraries.
        Err(e) => tracing::warn!(
            error = %e,
            "timescaledb could not be installed: readings will use native daily partitions"
        ),
    }
}

/// The `timescaledb.license` under which the compression and retention policies exist.
pub(crate) const COMMUNITY_LICENSE: &str = "timescale";

/// The server's `timescaledb.license` (`apache` or `timescale`), `None` when TimescaleDB's
/// library is not loaded.
pub(crate) async fn timescaledb_license(
    conn: &mut PgConnection,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT current_setting('timescaledb.license', true)")
        .fetch_one(conn)
        .await
}

/// Drops the extension just installed under a license without compression, unless the
/// readings are a hypertable already (a database migrated before the license changed).
async fn leave_out_timescaledb(conn: &mut PgConnection, license: &str) {
    match readings_are_a_hypertable(conn).await {
        Ok(true) => tracing::warn!(
            license,
            "timescaledb runs without the 'timescale' license: its compression and retention \
             policies on readings do not run"
        ),
        Ok(false) => match sqlx::raw_sql("DROP EXTENSION timescaledb")
            .execute(&mut *conn)
            .await
        {
            Ok(_) => tracing::warn!(
                license,
                "timescaledb is installed in its Apache-2 edition, which has no compression or \
                 retention policies: readings will use native daily partitions; for a \
                 hypertable, install TimescaleDB's Community edition (timescaledb.license = \
                 'timescale') before bootstrapping"
            ),
            Err(e) => tracing::warn!(error = %e, "dropping the unusable timescaledb failed"),
        },
        Err(e) => tracing::warn!(error = %e, "checking for readings_layout failed"),
    }
}

/// Whether the readings were migrated as a hypertable (not at all, or natively partitioned:
/// `false`).
async fn readings_are_a_hypertable(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let migrated: bool =
        sqlx::query_scalar("SELECT to_regclass('public.readings_layout') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !migrated {
        return Ok(false);
    }
    let layout: Option<String> = sqlx::query_scalar("SELECT layout FROM readings_layout")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(layout.as_deref() == Some("timescaledb"))
}

async fn restrict_access(conn: &mut PgConnection, name: &DatabaseName) -> Result<(), DbError> {
    let app = quote_ident(APP_ROLE).expect("role names are constants without NUL bytes");
    let owner = quote_ident(OWNER_ROLE).expect("role names are constants without NUL bytes");
    let db = name.quoted();
    // Only the roles of this database may connect to it (the owner can by owning it).
    // Before PostgreSQL 15 every role could create objects in `public`, and the schema belonged
    // to the bootstrap superuser; giving it to the owner makes older servers behave like 15+.
    let statements = [
        format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"),
        format!("GRANT CONNECT ON DATABASE {db} TO {app}"),
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_owned(),
        format!("ALTER SCHEMA public OWNER TO {owner}"),
    ];
    for statement in statements {
        sqlx::raw_sql(&statement)
            .execute(&mut *conn)
            .await
            .map_err(DbError::statement(statement.clone()))?;
    }
    Ok(())
}

/// Closes a connection politely; a failure only means the server closed it first.
async fn close(conn: PgConnection) {
    use sqlx::Connection as _;
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the bootstrap connection failed");
    }
}

fn sql_state(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()?
        .code()
        .map(|code| code.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_follow_the_pattern() {
        let max = format!("a{}", "b".repeat(62));
        for good in ["a", "_", "t_0123abcd", "maintainpro", max.as_str()] {
            assert!(DatabaseName::parse(good).is_ok(), "{good:?}");
        }
        let too_long = format!("a{}", "b".repeat(63));
        for bad in [
            "",
            "1abc",
            "Abc",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            "ä",
            "a\0",
            too_long.as_str(),
        ] {
            assert!(
                matches!(
                    DatabaseName::parse(bad),
                    Err(DbError::InvalidDatabaseName { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
