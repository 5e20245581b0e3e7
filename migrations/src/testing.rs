//! Test helpers for the other crates' integration tests (feature `testing`): a fresh,
//! migrated database per test, so each test owns its world.
//!
//! Where the databases live:
//! - `MPTEST_PG_ADMIN_URL` set: on that cluster, as its superuser. The project's
//!   test script sets it to a cluster it starts once for the whole run. Point it only at a
//!   disposable cluster: the test databases are never dropped, and bootstrapping them sets the
//!   shared MaintAInPro roles' passwords to the fixed test passwords below.
//! - unset: on one [`Cluster`] started lazily by the first test of the process and shared by
//!   all its tests, a convenience for running `cargo test` by hand. It is stopped, and its data
//!   deleted, when the test process exits (by the cluster's guardian: a `static` is never
//!   dropped).

use std::env;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::error::DbError;
use crate::throwaway::{Cluster, ClusterOptions};
use crate::urls::redacted;
use crate::{DatabaseUrls, RoleSecrets, StorageLayout, bootstrap, migrate};

/// The variable naming the superuser URL of the cluster to create test databases on.
pub const ADMIN_URL_VAR: &str = "MPTEST_PG_ADMIN_URL";

/// The owner role's password in test databases.
pub const TEST_OWNER_PASSWORD: &str = "owner-test-pw";
/// The app role's password in test databases.
pub const TEST_APP_PASSWORD: &str = "app-test-pw";

/// Connections per pool: enough for a test's concurrent work, few enough that many tests
/// running at once stay under the server's connection limit.
const POOL_SIZE: u32 = 5;

/// The process-wide cluster, when `MPTEST_PG_ADMIN_URL` is unset. Its server is a
/// child process, not a task, so it serves every test's runtime.
static SHARED_CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

/// The superuser URL of the cluster test databases are created on: the one named by
/// `MPTEST_PG_ADMIN_URL`, or the process-wide throwaway cluster, started on first use.
pub async fn admin_url() -> Result<String, DbError> {
    match env::var(ADMIN_URL_VAR) {
        Ok(url) if !url.is_empty() => Ok(url),
        Err(env::VarError::NotUnicode(_)) => Err(DbError::InvalidUrl {
            which: "admin",
            reason: format!("{ADMIN_URL_VAR} is not valid UTF-8"),
        }),
        Ok(_) | Err(env::VarError::NotPresent) => {
            let cluster = SHARED_CLUSTER
                .get_or_try_init(|| Cluster::start(ClusterOptions { fsync: false }))
                .await?;
            Ok(cluster.admin_url())
        }
    }
}

/// A fresh database, bootstrapped and migrated, for one test.
pub struct TestDatabase {
    /// The database name, `t_<uuid>`.
    pub name: String,
    /// The owner's and the app's URLs.
    pub urls: DatabaseUrls,
    /// How readings are stored on this cluster.
    pub layout: StorageLayout,
    admin_url: String,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("urls", &self.urls)
            .field("layout", &self.layout)
            .field("admin_url", &redacted(&self.admin_url))
            .finish()
    }
}

impl TestDatabase {
    /// Creates a uniquely named database on the test cluster (see [`admin_url`]), bootstraps
    /// it with the test passwords and migrates it. The database is left behind when the value
    /// is dropped: the cluster is throwaway.
    pub async fn create() -> Result<Self, DbError> {
        Self::create_on(admin_url().await?).await
    }

    /// As [`TestDatabase::create`], on the cluster whose superuser URL is `admin_url` (a
    /// test's own cluster, which it may restart).
    pub async fn create_on(admin_url: String) -> Result<Self, DbError> {
        let name = format!("t_{}", Uuid::new_v4().simple());
        let secrets = RoleSecrets {
            owner_password: TEST_OWNER_PASSWORD.to_owned(),
            app_password: TEST_APP_PASSWORD.to_owned(),
        };
        let urls = bootstrap(&admin_url, &name, &secrets).await?;
        let layout = migrate(&urls.owner_url).await?;
        Ok(Self {
            name,
            urls,
            layout,
            admin_url,
        })
    }

    /// The superuser URL of the cluster the database is on, for tests that must look behind
    /// row-level security or inspect the catalog as a superuser.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The app role's URL of this database, for tests that build their own pool.
    pub fn app_url(&self) -> &str {
        &self.urls.app_url
    }

    /// A pool logged in as the app role, the way the services connect.
    ///
    /// # Panics
    /// When no connection can be made: the database was just created and migrated, so the
    /// cluster has gone away and the test cannot go on.
    pub async fn app_pool(&self) -> PgPool {
        pool(&self.urls.app_url, "app").await
    }

    /// A pool logged in as the owner role (subject to row-level security too: it is FORCEd).
    ///
    /// # Panics
    /// As [`TestDatabase::app_pool`].
    pub async fn owner_pool(&self) -> PgPool {
        pool(&self.urls.owner_url, "owner").await
    }
}

async fn pool(url: &str, role: &str) -> PgPool {
    match PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect(url)
        .await
    {
        Ok(pool) => pool,
        Err(e) => panic!(
            "connecting to the test database as the {role} role ({}) failed: {e}",
            redacted(url)
        ),
    }
}
