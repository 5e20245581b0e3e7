//! The MaintAInPro database: its roles, its schema and the one-time steps that prepare a
//! PostgreSQL cluster for it.
//!
//! Two roles share every MaintAInPro database of a cluster. [`OWNER_ROLE`] owns the database
//! and runs the migrations; [`APP_ROLE`] is what the services connect as: it owns nothing, has
//! no `BYPASSRLS`, and every tenant table FORCEs row-level security, so it sees only the rows
//! of the tenant set in its transaction (`SET LOCAL app.tenant_id`, or
//! `set_config('app.tenant_id', <uuid>, true)`, the same setting).
//!
//! This crate never needs a live database to build, and it never keeps a superuser connection
//! beyond [`bootstrap`].
//!
//! # Layout
//!
//! - `bootstrap.rs`: [`bootstrap`], run once per database as a superuser: creates or updates
//!   the two roles, creates the database and tries to install TimescaleDB in it.
//! - `roles.rs`: [`RoleSecrets`] and the role statements, with passwords hashed before they
//!   leave the process.
//! - `urls.rs`: [`DatabaseUrls`], the per-role URLs derived from the admin URL.
//! - `migrate.rs`: [`migrate`] and [`StorageLayout`], run as the owner.
//! - `lib.rs` itself: the roles' names and [`SERVICE_SETTINGS`], the services' connection
//!   settings.
//! - `tenant.rs`: [`begin_tenant`], the transaction every tenant-scoped query runs in, and
//!   [`tenant_read_begin`], the same scope's statements for a client that sends them itself.
//! - `announcements.rs`: [`announcements::follow`], a listener on a channel where the
//!   database announces, by organisation, changes to what processes keep in memory.
//! - `sql.rs`: quoting of identifiers and literals for statements that take no parameters.
//! - `error.rs`: [`DbError`], the error of everything above.
//! - `throwaway.rs`: [`throwaway::Cluster`], a private PostgreSQL server started from the
//!   locally installed binaries, for tests and local runs.
//! - `testing.rs` (feature `testing`): [`testing::TestDatabase`], a fresh migrated database per
//!   test for the other crates' integration tests.
//! - `sql/`: the migrations themselves, embedded at compile time into [`MIGRATOR`].

mod bootstrap;
mod error;
mod migrate;
mod roles;
mod sql;
mod tenant;
mod urls;

pub mod announcements;
pub mod throwaway;

#[cfg(feature = "testing")]
pub mod testing;

pub use bootstrap::bootstrap;
pub use error::DbError;
pub use migrate::{StorageLayout, migrate};
pub use roles::RoleSecrets;
#[cfg(feature = "rls-probe")]
pub use tenant::rls_probe;
pub use tenant::{
    TENANT_SETTING, begin_tenant, begin_tenant_on, is_interrupted, is_transient, tenant_read_begin,
};
pub use urls::DatabaseUrls;

/// The schema migrations of `sql/`, embedded at compile time. Run them as [`OWNER_ROLE`]
/// through [`migrate`], never as a superuser: the objects they create must belong to the owner.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./sql");

/// The role the services connect as. It owns nothing and cannot bypass row-level security.
pub const APP_ROLE: &str = "maintainpro_app";

/// The role that owns the database and every object in it, and runs the migrations.
pub const OWNER_ROLE: &str = "maintainpro_owner";

/// The server settings of the services' connections (the shared pool and the work-order list's
/// own). Their statements are short (a page of a list, a batch of readings, a work order's
/// effects) and run many at a time: a parallel plan forks worker processes for each execution
/// and JIT compiles each one, both of which cost more than the statement under concurrent load
/// (the work-order list benchmark spent most of the database's CPU starting parallel workers
/// before these were turned off). Long analytical work (backtests) runs on pools of its own.
pub const SERVICE_SETTINGS: [(&str, &str); 2] =
    [("max_parallel_workers_per_gather", "0"), ("jit", "off")];
