//! The work-order list's own database connections: one round trip per page.
//!
//! A list through sqlx costs three round trips: `BEGIN` with the tenant setting, the list, and
//! the check sqlx's pool makes of every connection handed back (which carries the `ROLLBACK`).
//! Here the three statements are written together and answered together:
//!
//! ```text
//! BEGIN READ ONLY; SET LOCAL app.tenant_id = '<tenant>'     (simple query)
//! <the list>                                                (prepared, extended protocol)
//! ROLLBACK                                                  (simple query)
//! ```
//!
//! tokio-postgres sends a request when its future is first polled, and answers requests in the
//! order they were sent; [`ListPool::read`] polls the three futures in that order, in one poll,
//! so the list always runs inside the tenant's transaction. Should the setting fail, the
//! transaction is aborted and the list fails with it; were it missing, row-level security
//! would show no rows (and the list filters by tenant itself). The `ROLLBACK` is sent whatever
//! happens to the other two; a connection whose `ROLLBACK` did not succeed is not reused.
//!
//! The connections run every prepared statement with its generic plan (`plan_cache_mode`), and
//! with the service pool's settings (`migrations::SERVICE_SETTINGS`: no parallel workers, no
//! JIT): the list's plan follows from its
//! shape (an ordered index walk up to the page's end), not from its values.
//!
//! [`Sql`] builds a statement's text and parameters; [`ListPool::read`] runs it.

use std::fmt::Write as _;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use crate::error::ApiError;

/// Prepared statements a connection keeps before it forgets them all: the lists' shapes (which
/// filters, which sort) a plant uses are a few dozen; a client trying every combination must
/// not grow the server's memory without bound.
const MAX_STATEMENTS: usize = 200;

/// How long a request waits for a connection, or for a new one to be made, before it fails.
const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ListPoolError {
    #[error(
        "the database URL cannot be used for the list connections: {0} (they read the same URL \
         as the other connections; use only the standard libpq parameters in it)"
    )]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot build the list connection pool: {0}")]
    Build(String),
}

/// A pool of connections for tenant-scoped, read-only lists read in one round trip. Connects
/// lazily: building it checks the URL only.
#[derive(Clone)]
pub struct ListPool {
    pool: Pool,
}

impl std::fmt::Debug for ListPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("ListPool")
            .field("max_size", &status.max_size)
            .field("size", &status.size)
            .finish_non_exhaustive()
    }
}

impl ListPool {
    /// A pool of at most `size` connections to `url` (a `postgres://` URL or libpq key/value
    /// string, as the service pool's).
    pub fn new(url: &str, size: usize) -> Result<Self, ListPoolError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(ListPoolError::Url)?;
        // The URL's own options first, then the services' settings and the generic plans.
        let mut options = config.get_options().unwrap_or_default().to_owned();
        let settings = migrations::SERVICE_SETTINGS
            .into_iter()
            .chain([("plan_cache_mode", "force_generic_plan")]);
        for (name, value) in settings {
            let _ = write!(options, " -c {name}={value}");
        }
        config.options(options.trim_start());
        if config.get_application_name().is_none() {
            config.application_name("maintainpro-lists");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // Nothing is sent to check a connection handed back: a read always ends its
                // transaction in its own round trip, and one that failed is dropped instead.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .build()
            .map_err(|e| ListPoolError::Build(e.to_string()))?;
        Ok(Self { pool })
    }

    /// Runs `sql` (a single `SELECT`) with `params` in a read-only transaction scoped to
    /// `tenant`, in one round trip (one more the first time a connection sees `sql`, to
    /// prepare it).
    pub async fn read(&self, tenant: Uuid, sql: &Sql) -> Result<Vec<Row>, ApiError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| internal("no list connection", e))?;
        if client.statement_cache.size() >= MAX_STATEMENTS {
            client.statement_cache.clear();
        }
        let statement = client.prepare_cached(&sql.text).await.map_err(from_db)?;
        let begin = migrations::tenant_read_begin(tenant);
        let params = sql.params();
        // In this order, all three sent in join3's first poll; see the module's documentation.
        let (begun, rows, ended) = futures_util::future::join3(
            client.batch_execute(&begin),
            client.query(&statement, &params),
            client.batch_execute("ROLLBACK"),
        )
        .await;
        if ended.is_err() {
            // The transaction may still be open: the connection is not handed out again.
            // (When the ROLLBACK succeeded, whatever failed before it, nothing is left.)
            drop(deadpool_postgres::Object::take(client));
        }
        match (begun, rows, ended) {
            (Ok(()), Ok(rows), Ok(())) => Ok(rows),
            (Err(e), _, _) | (Ok(()), Err(e), _) | (Ok(()), Ok(_), Err(e)) => Err(from_db(e)),
        }
    }
}

fn internal(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    ApiError::Internal(anyhow::Error::new(e).context(what.to_owned()))
}

/// As `From<sqlx::Error>`: text PostgreSQL cannot hold (a NUL character) is the request's
/// fault; anything else is the server's.
fn from_db(e: tokio_postgres::Error) -> ApiError {
    match e.code().map(|code| code.code()) {
        Some(code) if crate::error::is_bad_text(code) => crate::error::bad_text(),
        _ => internal("the list query failed", e),
    }
}

/// A statement's text with `$n` placeholders and its parameters, built a piece at a time.
#[derive(Debug)]
pub struct Sql {
    text: String,
    params: Vec<Box<dyn ToSql + Send + Sync>>,
}

impl Sql {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            params: Vec::new(),
        }
    }

    /// Appends SQL text as it is.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`, sent as a parameter.
    pub fn push_bind<T: ToSql + Send + Sync + 'static>(&mut self, value: T) -> &mut Self {
        self.params.push(Box::new(value));
        let _ = write!(self.text, "${}", self.params.len());
        self
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut sql = Sql::new("SELECT 1 FROM t WHERE a = ");
        sql.push_bind(Uuid::nil()).push(" AND b = ANY(");
        sql.push_bind(vec!["x".to_owned()])
            .push(") LIMIT ")
            .push_bind(5_i64);
        assert_eq!(
            sql.text(),
            "SELECT 1 FROM t WHERE a = $1 AND b = ANY($2) LIMIT $3"
        );
        assert_eq!(sql.params().len(), 3);
    }

    #[test]
    fn a_url_with_parameters_libpq_does_not_know_is_refused_clearly() {
        let e = ListPool::new("postgres://u@127.0.0.1/db?statement-cache-capacity=5", 2)
            .expect_err("an unknown parameter");
        assert!(e.to_string().contains("list connections"), "{e}");
        ListPool::new("postgres://u:p@127.0.0.1:5/db?application_name=x", 2).expect("a valid URL");
    }
}
