//! [`DbError`]: what can go wrong while preparing or migrating a database, each variant saying
//! how to fix it. Messages name hosts, ports, roles and databases, never a password: callers
//! log them as they are.

use std::time::Duration;

use thiserror::Error;

use crate::throwaway::ClusterError;

/// An error of [`bootstrap`](crate::bootstrap), [`migrate`](crate::migrate) or the test helpers.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database name cannot be used as given.
    #[error(
        "invalid database name {name:?}: use 1 to 63 characters, a lowercase letter or `_` \
         first, then lowercase letters, digits or `_` (^[a-z_][a-z0-9_]{{0,62}}$)"
    )]
    InvalidDatabaseName {
        /// The rejected name.
        name: String,
    },

    /// A connection URL could not be parsed.
    #[error(
        "the {which} URL is not a valid PostgreSQL URL ({reason}); \
         expected postgres://ROLE:PASSWORD@HOST:PORT/DATABASE"
    )]
    InvalidUrl {
        /// Which URL: "admin", "owner", "app".
        which: &'static str,
        /// Why it was rejected (never the URL itself, which may hold a password).
        reason: String,
    },

    /// A role password cannot be used.
    #[error("the {role} password {reason}; choose another password")]
    InvalidPassword {
        /// The role whose password was rejected.
        role: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// No connection could be made.
    #[error(
        "cannot connect to PostgreSQL at {target} as role {role:?}: {source}; check that the \
         server is running and reachable there and that the role and its password are right"
    )]
    Connect {
        /// `host:port/database` (or the socket directory) that was tried.
        target: String,
        /// The role that tried to log in.
        role: String,
        /// The driver's error.
        source: sqlx::Error,
    },

    /// The server accepted no connection within the time limit.
    #[error(
        "connecting to PostgreSQL at {target} as role {role:?} took more than {after:?}; \
         check that the host and port are right and that no firewall drops the connection"
    )]
    ConnectTimeout {
        /// `host:port/database` (or the socket directory) that was tried.
        target: String,
        /// The role that tried to log in.
        role: String,
        /// How long it waited.
        after: Duration,
    },

    /// The admin URL's role cannot create roles, databases and extensions.
    #[error(
        "role {role:?} of the admin URL is not a superuser; bootstrap creates roles, a \
         database and extensions: give it a superuser's URL (e.g. role postgres)"
    )]
    NotSuperuser {
        /// The role of the admin URL.
        role: String,
    },

    /// A database of that name exists and belongs to someone else, so bootstrap leaves it alone.
    #[error(
        "database {name:?} already exists and is owned by {owner:?}, not {expected:?}; choose \
         another name, or hand it over with ALTER DATABASE {name} OWNER TO {expected} if it \
         really is a MaintAInPro database"
    )]
    DatabaseOwnedByOtherRole {
        /// The database.
        name: String,
        /// Its current owner.
        owner: String,
        /// The owner bootstrap expects.
        expected: &'static str,
    },

    /// A statement failed.
    #[error("{what} failed: {source}")]
    Statement {
        /// What was being done, e.g. "creating database t_1".
        what: String,
        /// The driver's error.
        source: sqlx::Error,
    },

    /// The migrations could not be applied.
    #[error(
        "applying the migrations failed: {source}; check that the database was prepared by \
         bootstrap and that the URL names the owner role, not the app role"
    )]
    Migrate {
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },

    /// `readings_layout` holds a value this version does not know.
    #[error(
        "readings_layout says {found:?}, expected \"timescaledb\" or \"native_partitions\"; \
         the database was migrated by a different version of MaintAInPro"
    )]
    UnknownLayout {
        /// The value found.
        found: String,
    },

    /// TimescaleDB is installed in the database under a license without the compression
    /// and retention policies the readings migration sets.
    #[error(
        "timescaledb is installed in this database with timescaledb.license = {license:?}, \
         which has no compression or retention policies; either install TimescaleDB's \
         Community edition (timescaledb.license = 'timescale', with shared_preload_libraries \
         = 'timescaledb'), or run DROP EXTENSION timescaledb so that readings use native \
         daily partitions"
    )]
    TimescaleDbWithoutCompression {
        /// The license found.
        license: String,
    },

    /// The throwaway cluster for tests could not be started.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl DbError {
    pub(crate) fn statement(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let what = what.into();
        move |source| Self::Statement { what, source }
    }
}
