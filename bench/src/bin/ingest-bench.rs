//! Ingest end to end: a load generator publishes batched readings for 10,000 tags to Mosquitto;
//! ingest (one process, synchronous commit on) writes them to PostgreSQL. The baseline,
//! measured in the same run against the same table: one connection COPYing the same rows in
//! binary, 10,000 rows per commit. Then a paced run at a fixed rate measures receipt-to-commit
//! latency. Everything runs on 127.0.0.1: a throwaway PostgreSQL cluster with fsync on, and a
//! private Mosquitto. During the paced run a superuser connection samples what the writers'
//! backends wait on (`pg_stat_activity`, every 10 ms), and the run reports who wrote the
//! shared buffers out meanwhile (`pg_stat_bgwriter`), so that a run's tail can be read against
//! where PostgreSQL spent its time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use ingest::copy::{self, Row};
use ingest::{Consumer, IngestConfig, PgStore};
use maintainpro_bench::Mosquitto;
use model::{GatewayId, TagName, TenantId, Timestamp};
use simulators::load::{LoadSpec, batch_readings, publish};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Parser)]
struct Args {
    /// Readings in the throughput run.
    #[arg(long, default_value_t = 3_000_000)]
    readings: u64,
    #[arg(long, default_value_t = 1000)]
    readings_per_batch: usize,
    #[arg(long, default_value_t = 10_000)]
    tags: usize,
    /// Rate of the latency run, in readings per second.
    #[arg(long, default_value_t = 250_000.0)]
    paced_rate: f64,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    paced_for: Duration,
    #[arg(long, default_value = "mosquitto")]
    mosquitto: std::path::PathBuf,
    /// Store writers of the consumer (`ingest.writers`); its default when not given.
    #[arg(long)]
    writers: Option<usize>,
    /// How long a group that is not full waits for more messages (`ingest.linger`); its
    /// default when not given.
    #[arg(long, value_parser = humantime::parse_duration)]
    linger: Option<Duration>,
    /// A PostgreSQL server setting, `name=value` (e.g. `max_wal_size=4GB`), made with `ALTER
    /// SYSTEM` before the run, which restarts the cluster to apply it; repeat for several.
    /// The output lists them. Without any, the server runs on PostgreSQL's defaults.
    #[arg(long = "pg-setting", value_parser = maintainpro_bench::parse_setting)]
    pg_settings: Vec<(String, String)>,
    /// Copy PostgreSQL's log here at the end (with `--pg-setting log_autovacuum_min_duration=0`
    /// it shows what the server did in the background during the paced run, whose start and
    /// end are printed to stderr).
    #[arg(long)]
    server_log: Option<std::path::PathBuf>,
}

/// Every `every`, the wait events of the cluster's active client backends (other than this
/// connection's), as `type:event` or `CPU` when a backend waits on nothing, until `stop`.
/// Answers how many backend samples each one had, and how many polls were made.
async fn sample_wait_events(
    admin_url: String,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<(std::collections::BTreeMap<String, u64>, u64)> {
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&admin_url).await?;
    let mut counts = std::collections::BTreeMap::new();
    let mut polls = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND state = 'active' \
             AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut conn)
        .await?;
        polls += 1;
        for event in events {
            *counts.entry(event).or_insert(0) += 1;
        }
    }
    Ok((counts, polls))
}

/// PostgreSQL's buffer-write counters (`pg_stat_bgwriter`): who wrote the shared buffers out
/// (backends themselves, the background writer, checkpoints), how many were allocated, and
/// how many checkpoints ran. Read before and after the paced run; the output gives the change.
const BUFFER_COUNTERS: [&str; 6] = [
    "buffers_backend",
    "buffers_backend_fsync",
    "buffers_clean",
    "buffers_checkpoint",
    "buffers_alloc",
    "checkpoints",
];

async fn buffer_counters(admin_url: &str) -> anyhow::Result<Vec<i64>> {
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(admin_url).await?;
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&mut conn)
        .await?;
    // PostgreSQL 17 moved the backends' writes to `pg_stat_io` and the checkpoints' to
    // `pg_stat_checkpointer`.
    let query = if version >= 170_000 {
        "SELECT (SELECT coalesce(sum(writes), 0)::int8 FROM pg_stat_io \
                 WHERE object = 'relation' \
                   AND backend_type NOT IN ('checkpointer', 'background writer')), \
                (SELECT coalesce(sum(fsyncs), 0)::int8 FROM pg_stat_io \
                 WHERE object = 'relation' \
                   AND backend_type NOT IN ('checkpointer', 'background writer')), \
                b.buffers_clean, c.buffers_written, b.buffers_alloc, \
                c.num_timed + c.num_requested \
         FROM pg_stat_bgwriter b, pg_stat_checkpointer c"
    } else {
        "SELECT buffers_backend, buffers_backend_fsync, buffers_clean, buffers_checkpoint, \
         buffers_alloc, checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
    };
    let row: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(query).fetch_one(&mut conn).await?;
    Ok(vec![row.0, row.1, row.2, row.3, row.4, row.5])
}

async fn wait_stored(
    stats: &ingest::IngestStats,
    target: u64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if stats.readings_stored.load(Ordering::Relaxed) >= target {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "ingest did not store {target} readings within {limit:?}: stored {}, messages {}, duplicates {}, dead letters {}",
            stats.readings_stored.load(Ordering::Relaxed),
            stats.messages.load(Ordering::Relaxed),
            stats.batches_duplicate.load(Ordering::Relaxed),
            stats.dead_letters.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The server's allocator (see the workspace's `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    maintainpro_bench::log_warnings_to_stderr();
    eprintln!("starting PostgreSQL (fsync on, synchronous_commit on) and Mosquitto");
    let (mut cluster, urls) = maintainpro_bench::migrated_cluster().await?;
    maintainpro_bench::apply_settings(&mut cluster, &args.pg_settings).await?;
    let (server_version, layout): (String, String) = {
        let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&urls.owner_url).await?;
        sqlx::query_as(
            "SELECT current_setting('server_version'), (SELECT layout FROM readings_layout)",
        )
        .fetch_one(&mut conn)
        .await?
    };
    eprintln!("PostgreSQL {server_version}, readings layout {layout}");
    let defaults = IngestConfig::new("");
    let writers = args.writers.unwrap_or(defaults.writers);
    let linger = args.linger.unwrap_or(defaults.linger);
    // The writers, and one for the decode stage's look-ups.
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(writers)? + 1)
        .connect(&urls.app_url)
        .await?;

    // One tenant, one gateway, the tags.
    let tenant = TenantId::new_random();
    let gateway = GatewayId::parse("bench-gw")?;
    let gateway_id = Uuid::new_v4();
    let tags: Vec<TagName> = (0..args.tags)
        .map(|i| TagName::parse(format!("line-{}/m{}.signal", i / 100, i)))
        .collect::<Result<_, _>>()?;
    {
        let mut tx = migrations::begin_tenant(&pool, tenant.as_uuid()).await?;
        sqlx::query("INSERT INTO tenants (id, slug, name) VALUES ($1, 'bench', 'Bench')")
            .bind(tenant.as_uuid())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO gateways (id, tenant_id, code, name) VALUES ($1, $2, $3, 'bench')",
        )
        .bind(gateway_id)
        .bind(tenant.as_uuid())
        .bind(gateway.as_str())
        .execute(&mut *tx)
        .await?;
        let names: Vec<&str> = tags.iter().map(TagName::as_str).collect();
        sqlx::query(
            "INSERT INTO tags (tenant_id, gateway_id, name) SELECT $1, $2, n FROM UNNEST($3::text[]) AS n",
        )
        .bind(tenant.as_uuid())
        .bind(gateway_id)
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }

    let dir = tempfile::tempdir()?;
    let mosquitto = Mosquitto::start(
        &args.mosquitto,
        dir.path(),
        "max_inflight_messages 100\nmax_queued_messages 100000\nset_tcp_nodelay true\n",
    )?;
    let broker = mosquitto.url.clone();

    let consumer = Consumer::new(
        IngestConfig {
            queue: 512,
            writers,
            linger,
            ..IngestConfig::new(broker.clone())
        },
        PgStore::new(pool.clone()),
        None,
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let ingest = {
        let stop = stop.clone();
        tokio::spawn(consumer.run_until(async move { stop.cancelled().await }))
    };
    while stats.subscriptions.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let batches = args.readings / args.readings_per_batch as u64;
    let spec = LoadSpec {
        broker: broker.clone(),
        tenant,
        gateway: gateway.clone(),
        tags: tags.clone(),
        readings_per_batch: args.readings_per_batch,
        batches,
        first_seq: 1,
        rate: None,
        in_flight: 100,
        start: Timestamp::now(),
    };
    eprintln!(
        "throughput run: {} readings in batches of {}",
        batches * args.readings_per_batch as u64,
        args.readings_per_batch
    );
    let progress = {
        let stats = std::sync::Arc::clone(&stats);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "  stored {} readings from {} messages",
                    stats.readings_stored.load(Ordering::Relaxed),
                    stats.messages.load(Ordering::Relaxed)
                );
            }
        })
    };
    let started = Instant::now();
    let report = publish(&spec).await?;
    eprintln!(
        "  load published and acknowledged by the broker after {:?}",
        started.elapsed()
    );
    let done = wait_stored(&stats, report.readings, Duration::from_secs(600)).await?;
    let e2e_rate = report.readings as f64 / done.duration_since(started).as_secs_f64();

    // Baseline: the same rows, COPY binary on one connection, 10,000 rows per commit.
    let mut tx = migrations::begin_tenant(&pool, tenant.as_uuid()).await?;
    let by_name: std::collections::HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT name, id FROM tags")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    tx.commit().await?;
    let mut baseline_spec = spec.clone();
    baseline_spec.start = Timestamp::now();
    let mut rows: Vec<Row> = Vec::with_capacity(report.readings as usize);
    for n in 0..batches {
        for r in batch_readings(&baseline_spec, n) {
            rows.push(Row {
                tag_id: by_name[r.tag.as_str()],
                ts: r.ts,
                value: r.value,
                quality: r.quality,
            });
        }
    }
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    maintainpro_bench::copy_in_commits(&mut conn, copy::COPY_READINGS, &rows, 10_000).await?;
    let copy_rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    drop(conn);

    // Latency at a fixed rate.
    let before = stats.readings_stored.load(Ordering::Relaxed);
    let paced_batches =
        (args.paced_rate * args.paced_for.as_secs_f64() / args.readings_per_batch as f64) as u64;
    let paced = LoadSpec {
        batches: paced_batches,
        first_seq: 1 + batches,
        rate: Some(args.paced_rate),
        start: Timestamp::now(),
        ..spec.clone()
    };
    stats.receipt_to_commit.reset();
    eprintln!(
        "paced run: {:.0} readings/s for {:?}, from {}",
        args.paced_rate,
        args.paced_for,
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
    );
    let counters_before = buffer_counters(&cluster.admin_url()).await?;
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample_wait_events(
        cluster.admin_url(),
        Duration::from_millis(10),
        sampling.clone(),
    ));
    let started = Instant::now();
    let paced_report = publish(&paced).await?;
    wait_stored(
        &stats,
        before + paced_report.readings,
        Duration::from_secs(600),
    )
    .await?;
    let paced_rate = paced_report.readings as f64 / started.elapsed().as_secs_f64();
    sampling.cancel();
    let (wait_events, polls) = sampler.await??;
    let counters_after = buffer_counters(&cluster.admin_url()).await?;
    eprintln!(
        "paced run stored by {}",
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
    );
    let p50 = stats.receipt_to_commit.quantile(0.50);
    let p99 = stats.receipt_to_commit.quantile(0.99);

    progress.abort();
    stop.cancel();
    ingest.await??;
    drop(mosquitto);
    pool.close().await;
    if let Some(to) = &args.server_log {
        std::fs::copy(cluster.root_dir().join("server.log"), to)?;
    }
    cluster.stop().await;

    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    // Each event's share of the backend samples, largest first: where the writers' time went.
    let samples: u64 = wait_events.values().sum();
    let mut shares: Vec<(String, u64)> = wait_events.into_iter().collect();
    shares.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let shares: Vec<serde_json::Value> = shares
        .into_iter()
        .map(|(event, n)| {
            let share = (n as f64 / samples.max(1) as f64 * 1000.0).round() / 1000.0;
            serde_json::json!([event, share])
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "server_version": server_version,
            "readings_layout": layout,
            "tags": args.tags,
            "writers": writers,
            "linger_ms": linger.as_millis(),
            "pg_settings": args
                .pg_settings
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>(),
            "readings_per_batch": args.readings_per_batch,
            "throughput_readings": report.readings,
            "end_to_end_readings_per_s": e2e_rate.round(),
            "raw_copy_readings_per_s": copy_rate.round(),
            "end_to_end_share_of_copy": (e2e_rate / copy_rate * 100.0).round() / 100.0,
            "paced_target_readings_per_s": args.paced_rate,
            "paced_achieved_readings_per_s": paced_rate.round(),
            "receipt_to_commit_p50_ms_upper_bound": ms(p50),
            "receipt_to_commit_p99_ms_upper_bound": ms(p99),
            "paced_wait_polls": polls,
            "paced_active_backends_mean": (samples as f64 / polls.max(1) as f64 * 100.0).round() / 100.0,
            "paced_wait_event_shares": shares,
            "paced_buffer_writes": BUFFER_COUNTERS
                .iter()
                .zip(counters_after.iter().zip(&counters_before))
                .map(|(name, (after, before))| ((*name).to_owned(), serde_json::json!(after - before)))
                .collect::<serde_json::Map<_, _>>(),
        })
    );
    Ok(())
}
