//! The readings layout at scale: "one tag over 24 hours, downsampled to 1,000 points" with
//! `--rows` readings stored (default 100 million), and the COPY rate into the same table
//! when empty and when full.
//!
//! Builds a throwaway PostgreSQL (fsync and synchronous commit on) with the project's own
//! migrations (native daily partitions, index `(tag_id, ts DESC) INCLUDE (value, quality)`:
//! the layout the migrations choose on stock PostgreSQL), `--tags` tags read once a second, and the readings of the
//! last `rows / tags` seconds written in time order as ingest writes them. Then:
//!
//! 1. COPY binary of `--copy-rows` rows in 10,000-row commits into the empty table (a future
//!    day, truncated afterwards), then the same into the full table: the index's cost as the
//!    table grows.
//! 2. `--queries` windows read once untimed-for-the-API ("first touch": the statements alone,
//!    timed, moving the pages into PostgreSQL's buffers), then `--queries` requests of `GET /api/v1/tags/{id}/readings?from&to&max_points=1000` for a
//!    random tag over a random 24-hour window, one at a time, through the API (session check,
//!    tenant transaction, the count and the bucket query), and the same statements alone on a
//!    connection configured as the server's (no HTTP, no authentication, no JSON) as the
//!    baseline: the database's share of a request.
//!
//! Prints JSON: sizes, load time, COPY rates, and latency percentiles.

use std::time::{Duration, Instant};

use anyhow::Context;
use api::ApiConfig;
use api::config::Secret;
use clap::Parser;
use ingest::copy::{self, Row};
use model::{Quality, Timestamp};
use serde_json::json;
use server::config::{DatabaseConfig, MetricsConfig, Role, RulesConfig};
use server::{ServerConfig, Services};
use sqlx::Connection;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "One tag over 24 h downsampled to 1,000 points, with 100M readings stored")]
struct Args {
    /// Readings stored before the queries.
    #[arg(long, default_value_t = 100_000_000)]
    rows: i64,
    /// Tags, each read once a second.
    #[arg(long, default_value_t = 1_000)]
    tags: i64,
    /// Tag-history requests measured (after 20 unmeasured).
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Rows of each COPY rate measurement.
    #[arg(long, default_value_t = 2_000_000)]
    copy_rows: usize,
    /// Print the plans of the API's two queries for the first window.
    #[arg(long)]
    explain: bool,
}

/// Rows per statement of the bulk load: one hour of every tag at 1,000 tags.
const LOAD_SECONDS_PER_STATEMENT: i64 = 3_600;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    api::webhooks::install_tls_provider();
    maintainpro_bench::log_warnings_to_stderr();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// COPYs `n` rows for `tag_ids` (one reading per tag per second from `start`) in 10,000-row
/// commits; readings per second.
async fn copy_rate(
    pool: &sqlx::PgPool,
    tenant: Uuid,
    tag_ids: &[i64],
    start: Timestamp,
    n: usize,
) -> anyhow::Result<f64> {
    let rows: Vec<Row> = (0..n)
        .map(|k| Row {
            tag_id: tag_ids[k % tag_ids.len()],
            ts: start.plus_micros(i64::try_from(k / tag_ids.len()).unwrap_or(0) * 1_000_000),
            value: k as f64,
            quality: Quality::Good,
        })
        .collect();
    let started = Instant::now();
    for chunk in rows.chunks(10_000) {
        let mut tx = migrations::begin_tenant(pool, tenant).await?;
        maintainpro_bench::copy_binary(&mut tx, copy::COPY_READINGS, chunk).await?;
        tx.commit().await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        args.tags > 0 && args.rows >= args.tags * 86_400,
        "--rows must cover 24 h of every tag: at least 86,400 x --tags"
    );
    eprintln!("starting PostgreSQL (fsync on)");
    let (_cluster, urls) = maintainpro_bench::migrated_cluster().await?;
    let pepper = Secret::new(Uuid::new_v4().simple().to_string().repeat(2));
    let hash = api::password::PasswordHasher::new(pepper.clone())?
        .hash(maintainpro_bench::BENCH_PASSWORD)?;
    let plant = server::demo::seed_plant(&urls.app_url, "bench", &hash).await?;
    let owner = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&urls.owner_url)
        .await?;
    let app = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&urls.app_url)
        .await?;

    // The tags: `--tags` on the demo gateway.
    let mut tx = migrations::begin_tenant(&app, plant.tenant).await?;
    let tag_ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO tags (tenant_id, gateway_id, name)
         SELECT $1, (SELECT id FROM gateways LIMIT 1), 'line-' || (i / 100) || '.sensor_' || i
         FROM generate_series(1, $2::bigint) i
         RETURNING id",
    )
    .bind(plant.tenant)
    .bind(args.tags)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let first_tag = *tag_ids.iter().min().context("tags")?;
    let last_tag = *tag_ids.iter().max().context("tags")?;

    // 1a. COPY into the empty table, on a day ahead (then emptied).
    let ahead = Timestamp::now().plus_micros(2 * 86_400_000_000);
    let copy_empty = copy_rate(&app, plant.tenant, &tag_ids, ahead, args.copy_rows).await?;
    eprintln!("COPY into the empty table: {copy_empty:.0} rows/s");
    let ahead_partitions: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tableoid::regclass::text FROM readings WHERE ts >= $1")
            .bind(ahead.to_datetime())
            .fetch_all(&owner)
            .await?;
    sqlx::raw_sql(&format!("TRUNCATE {}", ahead_partitions.join(", ")))
        .execute(&owner)
        .await?;

    // The history: the last `rows / tags` seconds, every tag each second, in time order.
    let seconds = args.rows / args.tags;
    let end = Timestamp::now().plus_micros(-60_000_000);
    let start = end.plus_micros(-seconds * 1_000_000);
    let started = Instant::now();
    let mut s = 0;
    while s < seconds {
        let upto = (s + LOAD_SECONDS_PER_STATEMENT).min(seconds);
        sqlx::query(
            "INSERT INTO readings (tag_id, ts, value, quality)
             SELECT t, $1::timestamptz + s * interval '1 second',
                    50 + 10 * sin(s / 600.0 + t) + (s * t % 97) / 97.0, 0
             FROM generate_series($2::bigint, $3::bigint - 1) s,
                  generate_series($4::bigint, $5::bigint) t",
        )
        .bind(start.to_datetime())
        .bind(s)
        .bind(upto)
        .bind(first_tag)
        .bind(last_tag)
        .execute(&owner)
        .await?;
        s = upto;
        eprintln!(
            "  loaded {} rows ({:.0?}, {:.0} rows/s)",
            s * args.tags,
            started.elapsed(),
            (s * args.tags) as f64 / started.elapsed().as_secs_f64()
        );
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let vacuum = Instant::now();
    sqlx::raw_sql("VACUUM ANALYZE readings")
        .execute(&owner)
        .await?;
    let vacuum_seconds = vacuum.elapsed().as_secs_f64();
    let (stored, heap, index): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT sum(reltuples)::bigint FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
                  WHERE i.inhparent = 'readings'::regclass),
                (SELECT sum(pg_relation_size(inhrelid))::bigint FROM pg_inherits WHERE inhparent = 'readings'::regclass),
                (SELECT sum(pg_indexes_size(inhrelid))::bigint FROM pg_inherits WHERE inhparent = 'readings'::regclass)",
    )
    .fetch_one(&owner)
    .await?;
    eprintln!(
        "stored ~{stored} rows: heap {} MiB, index {} MiB",
        heap >> 20,
        index >> 20
    );

    // 1b. COPY into the full table, after its newest readings.
    let copy_full = copy_rate(
        &app,
        plant.tenant,
        &tag_ids,
        end.plus_micros(1_000_000),
        args.copy_rows,
    )
    .await?;
    eprintln!("COPY into the full table: {copy_full:.0} rows/s");

    // 2. The tag-history request through the API, and its bucket query alone.
    let mut api = ApiConfig::new(
        "127.0.0.1:0".parse()?,
        Secret::new(format!(
            "{}{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        )),
        pepper,
    );
    let files = tempfile::tempdir()?;
    api.attachments_dir = files.path().to_path_buf();
    let config = ServerConfig {
        roles: vec![Role::Api],
        database: DatabaseConfig {
            url: urls.app_url.clone(),
            owner_url: None,
            max_connections: 4,
            list_connections: 2,
        },
        api: Some(api),
        ingest: None,
        rules: RulesConfig::default(),
        metrics: MetricsConfig::default(),
    };
    let services = Services::start(&config, None).await?;
    let base = format!("http://{}", services.api_addr().context("the api runs")?);
    let http = reqwest::Client::new();
    let token = maintainpro_bench::bench_login(&http, &base).await?;

    // A fixed pseudo-random sequence of (tag, window start), so runs compare.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let spare = seconds - 86_400;
    let mut windows = Vec::new();
    for _ in 0..args.queries + 20 {
        let tag = tag_ids[usize::try_from(next() % tag_ids.len() as u64)?];
        let offset = i64::try_from(next() % u64::try_from(spare.max(1))?)?;
        let from = start.plus_micros(offset * 1_000_000);
        windows.push((tag, from, from.plus_micros(86_400_000_000)));
    }
    // First touch: the windows' index pages come from the operating system's cache (or the
    // disk) into PostgreSQL's buffers. Then the same windows, warm, through the API and alone.
    let mut cold = statements_alone(&urls.app_url, plant.tenant, &windows).await?;
    let mut api_took = Vec::new();
    let mut points = 0;
    for (i, (tag, from, to)) in windows.iter().enumerate() {
        let sent = Instant::now();
        let res = http
            // RFC 3339 in UTC needs no escaping in a query string.
            .get(format!(
                "{base}/api/v1/tags/{tag}/readings?from={from}&to={to}&max_points=1000"
            ))
            .bearer_auth(&token)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 200, "tag history: {}", res.status());
        let body: serde_json::Value = res.json().await?;
        let took = sent.elapsed();
        if i >= 20 {
            api_took.push(took);
            points = body["points"].as_array().map_or(0, Vec::len);
            anyhow::ensure!(
                body["mode"] == "buckets",
                "expected buckets: {}",
                body["mode"]
            );
        }
    }
    if args.explain {
        let (tag, from, to) = windows[0];
        let mut tx = migrations::begin_tenant(&app, plant.tenant).await?;
        // As the API's pool runs them.
        sqlx::raw_sql("SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(api::routes::readings::BUCKETS_SETTINGS)
            .execute(&mut *tx)
            .await?;
        for (name, sql) in [
            ("count", api::routes::readings::COUNT_SQL),
            ("buckets", api::routes::readings::BUCKETS_SQL),
        ] {
            let plan: Vec<String> =
                sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"))
                    .bind(plant.tenant)
                    .bind(tag)
                    .bind(from.to_datetime())
                    .bind(to.to_datetime())
                    .bind(1001_i64)
                    .bind(87_i64)
                    .bind(0_i16)
                    .fetch_all(&mut *tx)
                    .await?;
            eprintln!("{name}:\n{}", plan.join("\n"));
        }
        tx.commit().await?;
    }

    let mut sql_took = statements_alone(&urls.app_url, plant.tenant, &windows).await?;
    services.stop().await;
    Ok(json!({
        "rows_stored": seconds * args.tags,
        "tags": args.tags,
        "seconds_of_history": seconds,
        "heap_mib": heap >> 20,
        "index_mib": index >> 20,
        "bulk_load": { "seconds": load_seconds.round(), "rows_per_second": ((seconds * args.tags) as f64 / load_seconds).round(), "vacuum_analyze_seconds": vacuum_seconds.round() },
        "copy_rows_per_second": { "empty_table": copy_empty.round(), "full_table": copy_full.round() },
        "tag_history_24h_1000_points": {
            "points_returned": points,
            "through_the_api": maintainpro_bench::latency_summary(&mut api_took),
            "first_touch_statements_alone": maintainpro_bench::latency_summary(&mut cold),
            "its_statements_alone": maintainpro_bench::latency_summary(&mut sql_took),
        },
    }))
}

/// The API's own statements for each window, on a connection configured as the service
/// pool's, without HTTP, authentication or JSON: the database's share of a request. The
/// time of each (the first 20 left out).
async fn statements_alone(
    app_url: &str,
    tenant: Uuid,
    windows: &[(i64, Timestamp, Timestamp)],
) -> anyhow::Result<Vec<Duration>> {
    let oltp: sqlx::postgres::PgConnectOptions = app_url.parse()?;
    let mut conn = sqlx::PgConnection::connect_with(
        &oltp.options([("max_parallel_workers_per_gather", "0"), ("jit", "off")]),
    )
    .await?;
    let mut took = Vec::new();
    for (i, (tag, from, to)) in windows.iter().enumerate() {
        let sent = Instant::now();
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(migrations::TENANT_SETTING)
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        let _: i64 = sqlx::query_scalar(api::routes::readings::COUNT_SQL)
            .bind(tenant)
            .bind(tag)
            .bind(from.to_datetime())
            .bind(to.to_datetime())
            .bind(1001_i64)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(api::routes::readings::BUCKETS_SETTINGS)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query(api::routes::readings::BUCKETS_SQL)
            .bind(tenant)
            .bind(tag)
            .bind(from.to_datetime())
            .bind(to.to_datetime())
            .bind(1001_i64)
            .bind(87_i64)
            .bind(0_i16)
            .fetch_all(&mut *tx)
            .await?
            .len();
        tx.commit().await?;
        if i >= 20 {
            took.push(sent.elapsed());
            anyhow::ensure!(n >= 990, "a 24 h window gives about 1,000 buckets, not {n}");
        }
    }
    conn.close().await?;
    Ok(took)
}
