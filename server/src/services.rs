//! Starts the configured roles against one database pool, and stops them in order: ingest
//! first (finish the message in hand, ack, disconnect), then the rules engine (drain what
//! ingest handed it), then the API (let requests in flight finish, for at most
//! `api::app::STOP_GRACE`). A role that ends before it is told to (a failure, a panic) is
//! reported through [`Services::ended`], so that the process can stop and be restarted
//! rather than run on without it. The pool's connections
//! carry an `application_name` of their own per start (`maintainpro/<id>`), by which the
//! stop finds and cancels the statements its roles gave up on and left running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use api::{Api, RulesStatus, WorkOrderService};
use ingest::{Consumer, IngestStats, PgStore};
use rules::RuleSet;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::config::{Role, ServerConfig};
use crate::rules_task::{self, RulesSource, RulesStats};

/// How long a stop waits for the pool's connections to close.
const POOL_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a stop tries to cancel the statements its roles left running.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// PostgreSQL keeps the first 63 bytes of an `application_name`.
const APPLICATION_NAME_BYTES: usize = 63;
/// The part of [`connection_name`] that identifies one start: `maintainpro/` and 12 hex.
const TAG_BYTES: usize = 24;

/// The connection options of the service pool ([`migrations::SERVICE_SETTINGS`]), its
/// connections named as [`connection_name`] says: the options and that name.
fn oltp_options(url: &str) -> Result<(PgConnectOptions, String), sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let name = connection_name(&options);
    let options = options
        .options(migrations::SERVICE_SETTINGS)
        .application_name(&name);
    Ok((options, name))
}

/// The `application_name` of one start's connections: `maintainpro/` and a random id (the
/// first [`TAG_BYTES`], ASCII, by which [`Services::stop`] tells its own backends from any
/// other's), then the name `given` (the database URL, or `PGAPPNAME`) has, if any, cut to
/// what PostgreSQL keeps (which shows bytes outside printable ASCII as `?` or `\xNN`).
fn connection_name(given: &PgConnectOptions) -> String {
    let id = &Uuid::new_v4().simple().to_string()[..12];
    let mut name = format!("maintainpro/{id}");
    if let Some(given) = given.get_application_name() {
        name.push(' ');
        for c in given.chars() {
            if name.len() + c.len_utf8() > APPLICATION_NAME_BYTES {
                break;
            }
            name.push(c);
        }
    }
    name
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("cannot connect to the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Lists(#[from] api::list_db::ListPoolError),
    #[error("migration failed: {0}")]
    Migrate(#[from] migrations::DbError),
    #[error("cannot bind the API listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the rules role is enabled but no rules were loaded")]
    NoRules,
    #[error("cannot read rule file {path}: {source}")]
    RuleFile {
        path: String,
        source: std::io::Error,
    },
    #[error("rule files have errors:\n{0}")]
    RuleErrors(String),
    #[error("cannot serve metrics on {addr}: {reason}")]
    Metrics { addr: SocketAddr, reason: String },
    #[error(
        "the rules engine stopped before it was ready (the log says why); ingest was not started"
    )]
    RulesNotReady,
}

/// What the services did, as the demo and scripts report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub readings_stored: u64,
    pub batches_duplicate: u64,
    pub dead_letters: u64,
    pub alarms_raised: u64,
    pub work_orders_opened: u64,
}

/// Loads and merges rule files, reporting every problem of every file.
pub fn load_rule_files(paths: &[std::path::PathBuf]) -> Result<RuleSet, ServicesError> {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ServicesError::RuleFile {
            path: name.clone(),
            source,
        })?;
        match RuleSet::parse(&name, &text) {
            Ok(set) => rules.extend(set.rules),
            Err(diags) => problems.extend(diags.iter().map(ToString::to_string)),
        }
    }
    let mut ids = std::collections::HashSet::new();
    for r in &rules {
        if !ids.insert(r.id.clone()) {
            problems.push(format!(
                "rule id {:?} is defined in more than one file",
                r.id
            ));
        }
    }
    if problems.is_empty() {
        Ok(RuleSet {
            source_name: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            rules,
        })
    } else {
        Err(ServicesError::RuleErrors(problems.join("\n")))
    }
}

/// The running roles of one process.
#[derive(Debug)]
pub struct Services {
    pool: PgPool,
    /// What begins the `application_name` of this start's connections (`maintainpro/<id>`).
    connection_tag: String,
    api_addr: Option<SocketAddr>,
    ingest_stats: Arc<IngestStats>,
    rules_stats: Arc<RulesStats>,
    stop_ingest: CancellationToken,
    stop_api: CancellationToken,
    /// Cancelled when a role ends before it was told to.
    ended: CancellationToken,
    /// Cancelled by [`Services::stop`] once the rules have waited long enough for the
    /// database to take their last alarm events.
    give_up_rules: CancellationToken,
    /// `rules.database_timeout`: how long that is, counted from ingest's end.
    rules_database_timeout: Duration,
    ingest: Option<JoinHandle<()>>,
    rules: Option<JoinHandle<()>>,
    api: Option<JoinHandle<()>>,
}

impl Services {
    /// Connects, migrates when an owner URL is configured, and starts the configured roles.
    /// `rules` is required when the rules role runs.
    pub async fn start(
        config: &ServerConfig,
        rules: Option<RuleSet>,
    ) -> Result<Services, ServicesError> {
        if let Some(owner_url) = &config.database.owner_url {
            migrations::migrate(owner_url).await?;
        }
        let (options, connection_name) = oltp_options(&config.database.url)?;
        let pool = PgPoolOptions::new()
            .max_connections(config.database.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // No ping before each use: a round trip per request, to find out what the
            // request's first statement finds out anyway. A connection that broke while idle
            // (a database restart) fails that one request with a connection error, which
            // callers already treat as transient, and leaves the pool.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        tracing::info!(application_name = %connection_name, "connected to the database");
        if let Some(addr) = config.metrics.listen {
            serve_metrics(addr).await?;
        }
        let stop_ingest = CancellationToken::new();
        let stop_api = CancellationToken::new();
        let rules_stats = Arc::new(RulesStats::default());
        let rules_status = Arc::new(RulesStatus::default());
        let mut services = Services {
            pool: pool.clone(),
            connection_tag: connection_name[..TAG_BYTES].to_owned(),
            api_addr: None,
            ingest_stats: Arc::new(IngestStats::default()),
            rules_stats: Arc::clone(&rules_stats),
            stop_ingest: stop_ingest.clone(),
            stop_api: stop_api.clone(),
            ended: CancellationToken::new(),
            give_up_rules: CancellationToken::new(),
            rules_database_timeout: config.rules.database_timeout,
            ingest: None,
            rules: None,
            api: None,
        };
        if let (Some(api_config), true) = (&config.api, config.runs(Role::Api)) {
            let lists = api::list_db::ListPool::new(
                &config.database.url,
                usize::try_from(config.database.list_connections).unwrap_or(usize::MAX),
            )?;
            let api = Api::build(api_config, pool.clone(), lists, Arc::clone(&rules_status))
                .await
                .map_err(|source| ServicesError::Bind {
                    addr: api_config.listen,
                    source,
                })?;
            services.api_addr = Some(api.local_addr().map_err(|source| ServicesError::Bind {
                addr: api_config.listen,
                source,
            })?);
            let stop = stop_api.clone();
            services.api = Some(supervise(
                "api",
                async move {
                    if let Err(e) = api.run_until(async move { stop.cancelled().await }).await {
                        tracing::error!(error = %e, "API server failed");
                    }
                },
                stop_api.clone(),
                services.ended.clone(),
            ));
        }
        let rules_tx = if config.runs(Role::Rules) {
            let rules = Arc::new(rules.ok_or(ServicesError::NoRules)?);
            tracing::info!(rules = rules.rules.len(), source = %rules.source_name, "rules loaded");
            let (tx, rx) = ingest::queue::bounded(64);
            let wo = WorkOrderService::new(pool.clone());
            let source = RulesSource {
                rules,
                files: if config.rules.watch {
                    config.rules.files.clone()
                } else {
                    Vec::new()
                },
                replay_horizon: config.rules.replay_horizon,
                reorder_window: config.rules.reorder_window,
                warm_up: config.rules.warm_up,
                shards: config.rules.shards,
                database_timeout: config.rules.database_timeout,
            };
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            services.rules = Some(supervise(
                "rules",
                rules_task::run(
                    source,
                    rx,
                    wo,
                    pool.clone(),
                    rules_stats,
                    rules_status,
                    ready_tx,
                    stop_ingest.clone(),
                    services.give_up_rules.clone(),
                ),
                stop_ingest.clone(),
                services.ended.clone(),
            ));
            // The engines are warmed up with what is stored now: nothing may be stored
            // before that is done. Waits as long as the database is away.
            if ready.await.is_err() {
                services.stop().await;
                return Err(ServicesError::RulesNotReady);
            }
            Some(tx)
        } else {
            None
        };
        if let (Some(ingest_config), true) = (&config.ingest, config.runs(Role::Ingest)) {
            let consumer =
                Consumer::new(ingest_config.clone(), PgStore::new(pool.clone()), rules_tx);
            services.ingest_stats = consumer.stats();
            let stop = stop_ingest.clone();
            services.ingest = Some(supervise(
                "ingest",
                async move {
                    if let Err(e) = consumer
                        .run_until(async move { stop.cancelled().await })
                        .await
                    {
                        tracing::error!(error = %e, "ingest failed");
                    }
                },
                stop_ingest.clone(),
                services.ended.clone(),
            ));
        }
        Ok(services)
    }

    /// Completes when a role has ended before it was told to (its failure is logged): the
    /// process should then stop, [`Services::stop`] the others, and exit with an error.
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }

    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Waits up to `within` for the broker to confirm ingest's subscriptions (at once when
    /// ingest does not run). A new session receives nothing published before that, so
    /// whatever starts publishing should wait for it. Returns whether it happened.
    pub async fn ingest_subscribed(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.ingest.is_none() || self.ingest_stats.subscriptions.load(Ordering::Relaxed) > 0
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What the ingest role has done so far (and does until it stops).
    pub fn ingest_stats(&self) -> Arc<IngestStats> {
        Arc::clone(&self.ingest_stats)
    }

    /// What the rules role has done so far (and does until it stops).
    pub fn rules_stats(&self) -> Arc<RulesStats> {
        Arc::clone(&self.rules_stats)
    }

    pub fn summary(&self) -> Summary {
        let i = &self.ingest_stats;
        let r = &self.rules_stats;
        Summary {
            readings_stored: i.readings_stored.load(Ordering::Relaxed),
            batches_duplicate: i.batches_duplicate.load(Ordering::Relaxed),
            dead_letters: i.dead_letters.load(Ordering::Relaxed),
            alarms_raised: r.alarms_raised.load(Ordering::Relaxed),
            work_orders_opened: r.work_orders_opened.load(Ordering::Relaxed),
        }
    }

    /// Stops every role in order and closes the pool: ingest (which stores and acknowledges
    /// what it has decoded, or leaves it to the broker when the database is away), the rules
    /// (which apply their last alarm events, waiting at most `rules.database_timeout` for the
    /// database), then the API. Statements the roles gave up on and that are still running
    /// in the database are then cancelled.
    pub async fn stop(mut self) -> Summary {
        self.stop_ingest.cancel();
        if let Some(task) = self.ingest.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "ingest's supervisor panicked");
        }
        // Ingest has handed the rules all it will: the events they still have to apply wait
        // at most the database timeout for the database (a database that is away would
        // otherwise hold the stop until it is back).
        let give_up = self.give_up_rules.clone();
        let wait = self.rules_database_timeout;
        let _give_up = AbortOnDropHandle::new(tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            give_up.cancel();
        }));
        if let Some(task) = self.rules.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the rules' supervisor panicked");
        }
        self.stop_api.cancel();
        if let Some(task) = self.api.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the API's supervisor panicked");
        }
        let summary = self.summary();
        // Every role has stopped: a connection still out, or one a role closed after giving
        // up on it, may have left a statement waiting in the database (for a lock, say),
        // which it would apply once it gets it.
        let busy = self.pool.size() > u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        let given_up = [
            &self.ingest_stats.database_timeouts,
            &self.rules_stats.database_timeouts,
            &self.rules_stats.events_given_up,
        ]
        .iter()
        .any(|n| n.load(Ordering::Relaxed) > 0);
        if busy || given_up {
            cancel_left_running(&self.pool.connect_options(), &self.connection_tag).await;
        }
        // Closing waits for every connection to come back; one that a role gave up on (a
        // database that stopped answering) may never come back, and must not hold the stop.
        if tokio::time::timeout(POOL_CLOSE_GRACE, self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!(
                "database connections still busy after {POOL_CLOSE_GRACE:?}; leaving them"
            );
        }
        summary
    }
}

/// Asks the database to cancel the statements still running on this start's connections
/// (their `application_name` begins with `tag`), from a connection of its own, so that a
/// statement a role gave up on is not applied after the stop. Called once every role has
/// stopped (the API having waited for the work its requests left after their answer), so
/// whatever still runs was given up on, however young. A cancel is a request: a statement
/// already committing still commits. Waits at most [`CANCEL_GRACE`]; a database that cannot
/// be reached is logged.
async fn cancel_left_running(options: &PgConnectOptions, tag: &str) {
    let cancel = async {
        let mut conn = PgConnection::connect_with(options).await?;
        let requested: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity
             WHERE starts_with(application_name, $1) AND state = 'active'
               AND pid <> pg_backend_pid()",
        )
        .bind(tag)
        .fetch_one(&mut conn)
        .await?;
        conn.close().await?;
        Ok::<_, sqlx::Error>(requested)
    };
    match tokio::time::timeout(CANCEL_GRACE, cancel).await {
        Ok(Ok(0)) => {}
        // A statement whose future a role dropped also shows, once cancelled, as sqlx's
        // warning about testing the connection on release (SQLSTATE 57014); a request still
        // waiting gets the error itself and answers 500.
        Ok(Ok(n)) => tracing::warn!(
            statements = n,
            "cancel requested for statements the stopped roles had given up on and left running"
        ),
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "cannot cancel the statements the stopped roles gave up on; the database may \
             still apply them"
        ),
        Err(_) => tracing::warn!(
            "cannot cancel the statements the stopped roles gave up on within \
             {CANCEL_GRACE:?}; the database may still apply them"
        ),
    }
}

/// Runs a role's task; when it ends, or panics, before `stopping` is cancelled, logs that and
/// cancels `ended`.
fn supervise(
    role: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
    stopping: CancellationToken,
    ended: CancellationToken,
) -> JoinHandle<()> {
    let task = tokio::spawn(task);
    tokio::spawn(async move {
        if let Err(e) = task.await {
            tracing::error!(role, error = %e, "the role's task panicked");
        }
        if !stopping.is_cancelled() {
            tracing::error!(role, "the role stopped by itself; the server stops");
            ended.cancel();
        }
    })
}

/// Upper bounds of the buckets of the histograms in seconds (`..._seconds`): from a
/// millisecond to an hour, so that a backlog's lag still lands in a bucket.
const SECONDS_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];
/// Upper bounds of the buckets of the size histograms of ingest's groups.
const GROUP_MESSAGES_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
const GROUP_READINGS_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0];

/// The Prometheus exporter, its histograms exported as histograms (buckets that sum across
/// processes) rather than as summaries (quantiles of one process, which do not).
fn metrics_builder()
-> Result<metrics_exporter_prometheus::PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    use metrics_exporter_prometheus::Matcher;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("maintainpro_ingest_group_messages".into()),
            &GROUP_MESSAGES_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("maintainpro_ingest_group_readings".into()),
            &GROUP_READINGS_BUCKETS,
        )
}

async fn serve_metrics(addr: SocketAddr) -> Result<(), ServicesError> {
    let err = |reason: String| ServicesError::Metrics { addr, reason };
    let handle = metrics_builder()
        .and_then(|builder| builder.install_recorder())
        .map_err(|e| err(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| err(e.to_string()))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "metrics at /metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(url: &str) -> String {
        connection_name(&url.parse().unwrap())
    }

    #[test]
    fn a_connection_name_keeps_its_id_and_as_much_of_the_given_name_as_fits() {
        let plain = name("postgres://app@localhost/db");
        assert!(plain.starts_with("maintainpro/"), "{plain}");
        assert_eq!(plain.len(), "maintainpro/".len() + 12);
        assert_ne!(plain, name("postgres://app@localhost/db"));

        let given = name("postgres://app@localhost/db?application_name=plant-a");
        assert!(given.ends_with(" plant-a"), "{given}");
        let long = name(&format!(
            "postgres://app@localhost/db?application_name={}",
            "é".repeat(40)
        ));
        assert!(long.len() <= APPLICATION_NAME_BYTES, "{long}");
        assert!(long.starts_with(&plain[..12]), "{long}");
        assert_eq!(long.split_once(' ').unwrap().0.len(), TAG_BYTES);
        assert_eq!(plain.len(), TAG_BYTES);
        assert!(plain.is_ascii());
    }
}
