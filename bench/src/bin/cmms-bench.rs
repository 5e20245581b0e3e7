//! The CMMS API under load: filtered work-order lists in a tenant with 1,000,000 work orders
//! and 100,000 assets, requested by concurrent clients over loopback.
//!
//! Seeds a throwaway PostgreSQL (fsync on) through the application role, starts the API on
//! two worker threads (the reference machine's two cores), signs in, then runs `--clients`
//! concurrent keep-alive connections for `--duration` after `--warmup`, each sending the next
//! request of a fixed mix of filtered lists (status, priority, assignee, asset subtree,
//! full-text search, overdue, each with its sort). Prints requests per second and latency
//! percentiles, overall and per query, as JSON, with each query's latency alone (sent one at a
//! time before the load) and two baselines of the same server under the same load: the HTTP
//! stack alone (`/health/live`) and the cheapest authenticated list (`/api/v1/teams`), and
//! the lists again with each client count of `--also-clients` (`by_clients`). The
//! clients run on a runtime of their own (one thread), on the same machine: their CPU is taken
//! from the server's, as a load generator's would be.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use api::ApiConfig;
use api::config::Secret;
use clap::Parser;
use serde_json::json;
use server::config::{DatabaseConfig, MetricsConfig, Role, RulesConfig};
use server::{ServerConfig, Services};
use tokio::runtime::Runtime;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "Filtered work-order lists under load, 1M work orders / 100k assets")]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    work_orders: i64,
    #[arg(long, default_value_t = 100_000)]
    assets: i64,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Other client counts to measure the lists with after the main run (comma-separated),
    /// each for `--duration` after `--warmup`: how throughput and latency move with load.
    #[arg(long, value_delimiter = ',')]
    also_clients: Vec<usize>,
    /// Database connections of the API's pool (8 on two cores: 16 gave the same throughput
    /// with a longer tail, BENCHMARKS.md).
    #[arg(long, default_value_t = 8)]
    pool: u32,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How long each baseline (the HTTP stack alone, an authenticated one-row list) runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    baseline: Duration,
    /// Requests of each query sent one at a time, before the load, for its unloaded cost.
    #[arg(long, default_value_t = 200)]
    serial: usize,
}

fn runtime(name: &str, threads: usize) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
}

/// The server's allocator (see the workspace's `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    api::webhooks::install_tls_provider();
    maintainpro_bench::log_warnings_to_stderr();
    let clients = runtime("clients", 1)?;
    let server = runtime("server", 2)?;
    let report = server.block_on(run(&args, &clients))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Seeds the tenant: a tree of assets (lines, machines, components), 50 technicians, and
/// `work_orders` work orders spread over two years with a realistic mix of statuses. `{...}`
/// are filled in by [`seed`].
const SEED: &str = "
INSERT INTO sites (id, tenant_id, name) VALUES ('{site}', '{tenant}', 'Bench site');
INSERT INTO assets (id, tenant_id, site_id, parent_id, name, criticality)
SELECT md5('line' || i)::uuid, '{tenant}', '{site}', NULL, 'Line ' || i, 3 FROM generate_series(1, 100) i;
INSERT INTO assets (id, tenant_id, site_id, parent_id, name, criticality)
SELECT md5('machine' || i)::uuid, '{tenant}', '{site}', md5('line' || (1 + i % 100))::uuid, 'Machine ' || i, 1 + i % 5
FROM generate_series(1, 1000) i;
INSERT INTO assets (id, tenant_id, site_id, parent_id, name, criticality)
SELECT md5('part' || i)::uuid, '{tenant}', '{site}', md5('machine' || (1 + i % 1000))::uuid, 'Component ' || i, 1 + i % 5
FROM generate_series(1, {components}) i;
INSERT INTO users (id, tenant_id, email, display_name, password_hash, role)
SELECT md5('tech' || i)::uuid, '{tenant}', 'tech' || i || '@bench.example', 'Technician ' || i, 'x', 'technician'
FROM generate_series(1, 50) i;
";

const WORK_ORDERS: &str = "
INSERT INTO work_orders (id, tenant_id, asset_id, title, description, priority, status, work_type,
                         source, assignee_user, created_at, updated_at, closed_at, resolution)
SELECT gen_random_uuid(), $1,
       CASE WHEN i % 10 = 0 THEN md5('machine' || (1 + i % 1000))::uuid
            ELSE md5('part' || (1 + i % ($2::int - 1100)))::uuid END,
       (ARRAY['Bearing noise', 'Oil leak', 'Belt worn', 'Sensor drift', 'Motor overheating',
              'Hydraulic pressure low', 'Guard loose', 'Filter clogged'])[1 + i % 8] || ' #' || i,
       (ARRAY['Found during the round', 'Reported by the operator', 'Vibration above limit',
              'Replace and check alignment'])[1 + i % 4],
       (ARRAY['low', 'medium', 'high', 'critical'])[1 + (i * 7) % 4],
       s.status,
       (ARRAY['corrective', 'preventive', 'inspection', 'emergency', 'instrumentation'])[1 + i % 5],
       CASE WHEN i % 3 = 0 THEN 'rule' ELSE 'manual' END,
       CASE WHEN s.status = 'open' THEN NULL ELSE md5('tech' || (1 + i % 50))::uuid END,
       t.created, t.created,
       CASE WHEN s.status IN ('completed', 'verified', 'cancelled') THEN t.created + interval '3 hours' END,
       CASE WHEN s.status IN ('completed', 'verified') THEN 'fixed' END
FROM generate_series($3::int, $4::int) i,
     LATERAL (SELECT now() - (i % 730) * interval '1 day' - (i % 1440) * interval '1 minute' AS created) t,
     -- The status from the hundreds, so that it does not follow the asset (chosen by i).
     LATERAL (SELECT CASE WHEN (i / 100) % 100 < 5 THEN 'open' WHEN (i / 100) % 100 < 10 THEN 'assigned'
                          WHEN (i / 100) % 100 < 14 THEN 'in_progress' WHEN (i / 100) % 100 < 15 THEN 'on_hold'
                          WHEN (i / 100) % 100 < 40 THEN 'completed' WHEN (i / 100) % 100 < 95 THEN 'verified'
                          ELSE 'cancelled' END AS status) s;
";

/// Sends `GET /api/v1/work-orders?{query}` `times` times, one at a time: the latency summary,
/// with how many items the last answer held.
async fn serial_cost(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
    times: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut took = Vec::new();
    let mut body = Default::default();
    for _ in 0..times {
        let sent = Instant::now();
        let res = http
            .get(format!("{base}/api/v1/work-orders?{query}"))
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 200, "{query}: {}", res.status());
        body = res.bytes().await?;
        took.push(sent.elapsed());
    }
    let items = if body.is_empty() {
        0
    } else {
        serde_json::from_slice::<serde_json::Value>(&body)?["items"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let mut summary = maintainpro_bench::latency_summary(&mut took);
    summary["items"] = json!(items);
    Ok(summary)
}

async fn seed(pool: &sqlx::PgPool, tenant: Uuid, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    anyhow::ensure!(
        args.assets > 1100,
        "--assets must be above 1100 (lines and machines)"
    );
    // Ids and counts only, all generated here: formatting them into the statements is safe.
    let seed = SEED
        .replace("{tenant}", &tenant.to_string())
        .replace("{site}", &Uuid::new_v4().to_string())
        .replace("{components}", &(args.assets - 1100).to_string());
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    sqlx::raw_sql(&seed)
        .execute(&mut *tx)
        .await
        .context("seeding the assets and technicians")?;
    tx.commit().await?;
    eprintln!("seeded {} assets in {:.1?}", args.assets, started.elapsed());
    let batch = 100_000;
    let mut from = 1;
    while from <= args.work_orders {
        let to = (from + batch - 1).min(args.work_orders);
        let mut tx = migrations::begin_tenant(pool, tenant).await?;
        sqlx::query(WORK_ORDERS)
            .bind(tenant)
            .bind(args.assets as i32)
            .bind(from as i32)
            .bind(to as i32)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        eprintln!("  {to} work orders ({:.0?})", started.elapsed());
        from = to + 1;
    }
    Ok(())
}

async fn run(args: &Args, clients: &Runtime) -> anyhow::Result<serde_json::Value> {
    eprintln!("starting PostgreSQL (fsync on)");
    let (_cluster, urls) = maintainpro_bench::migrated_cluster().await?;
    let pepper = Secret::new(Uuid::new_v4().simple().to_string().repeat(2));
    let hash = api::password::PasswordHasher::new(pepper.clone())?
        .hash(maintainpro_bench::BENCH_PASSWORD)?;
    let plant = server::demo::seed_plant(&urls.app_url, "bench", &hash).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&urls.app_url)
        .await?;
    seed(&pool, plant.tenant, args).await?;
    {
        let owner = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&urls.owner_url)
            .await?;
        sqlx::raw_sql("VACUUM ANALYZE work_orders, assets, users, work_order_events")
            .execute(&owner)
            .await?;
        owner.close().await;
    }

    let mut api = ApiConfig::new(
        "127.0.0.1:0".parse()?,
        Secret::new(format!(
            "{}{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        )),
        pepper,
    );
    // The benchmark measures the list, not the per-tenant rate limit.
    api.tenant_rate = "1000000/s".parse().map_err(anyhow::Error::msg)?;
    api.tenant_burst = 1_000_000.try_into()?;
    let files = tempfile::tempdir()?;
    api.attachments_dir = files.path().to_path_buf();
    let config = ServerConfig {
        roles: vec![Role::Api],
        database: DatabaseConfig {
            url: urls.app_url.clone(),
            owner_url: None,
            max_connections: args.pool,
            list_connections: args.pool,
        },
        api: Some(api),
        ingest: None,
        rules: RulesConfig::default(),
        metrics: MetricsConfig::default(),
    };
    let services = Services::start(&config, None).await?;
    let base = format!("http://{}", services.api_addr().context("the api runs")?);

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(
            args.also_clients
                .iter()
                .copied()
                .fold(args.clients, usize::max),
        )
        .build()?;
    let token = maintainpro_bench::bench_login(&http, &base).await?;
    let mut tx = migrations::begin_tenant(&pool, plant.tenant).await?;
    let tech: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = 'tech7@bench.example'")
        .fetch_one(&mut *tx)
        .await?;
    let line: Uuid = sqlx::query_scalar("SELECT id FROM assets WHERE name = 'Line 1'")
        .fetch_one(&mut *tx)
        .await?;
    let machine: Uuid = sqlx::query_scalar("SELECT id FROM assets WHERE name = 'Machine 41'")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let queries: Arc<Vec<(&'static str, String)>> = Arc::new(vec![
        (
            "open, urgent first",
            "status=open_any&sort=priority&limit=50".into(),
        ),
        (
            "high+critical open",
            "status=open,assigned,in_progress&priority=high,critical&limit=50".into(),
        ),
        (
            "a technician's",
            format!("assignee={tech}&status=open_any&sort=due&limit=50"),
        ),
        ("machine subtree", format!("asset_id={machine}&limit=50")),
        (
            "line subtree, open",
            format!("asset_id={line}&status=open_any&limit=50"),
        ),
        (
            "search",
            "q=bearing%20noise&status=open_any&limit=50".into(),
        ),
        ("overdue", "overdue=true&sort=due&limit=50".into()),
        ("rule-made, newest", "source=rule&limit=50".into()),
    ]);
    // Every query answers, and answers rows, before the clock starts.
    for (name, q) in queries.iter() {
        let res = http
            .get(format!("{base}/api/v1/work-orders?{q}"))
            .bearer_auth(&token)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 200, "{name}: {}", res.status());
        let body: serde_json::Value = res.json().await?;
        eprintln!(
            "  {name}: {} items",
            body["items"].as_array().map_or(0, Vec::len)
        );
    }

    // One client, one request at a time: what each query costs when nothing else runs.
    let mut serial = serde_json::Map::new();
    for (name, q) in queries.iter() {
        let cost = serial_cost(&http, &base, &token, q, args.serial).await?;
        serial.insert((*name).to_owned(), cost);
    }
    // Searches for one work order by its number (a word in no other title): measured the
    // same way but 20 times each (each takes up to a second), and not part of the load's mix.
    let number = args.work_orders / 2 / 10_000 * 10_000 + 5; // an open one (see WORK_ORDERS)
    let mut searches = serde_json::Map::new();
    for (name, q) in [
        (
            "one work order by number, open",
            format!("q={number}&status=open_any&limit=50"),
        ),
        (
            "one work order by number, any status",
            format!("q={number}&limit=50"),
        ),
    ] {
        let mut cost = serial_cost(&http, &base, &token, &q, args.serial.min(20)).await?;
        cost["query"] = json!(q);
        searches.insert(name.to_owned(), cost);
    }

    eprintln!(
        "{} clients, {:?} warm-up, {:?} measured",
        args.clients, args.warmup, args.duration
    );
    let run = |paths: Vec<String>, duration: Duration| {
        load(
            clients,
            &http,
            &token,
            args,
            args.clients,
            Arc::new(paths),
            duration,
        )
    };
    // Baselines of the same run: the HTTP stack alone (no authentication, no database), and
    // an authenticated list of one row (the session check and a tenant transaction).
    let baselines = [
        ("health (no auth, no database)", "/health/live"),
        ("teams (auth + one-row list)", "/api/v1/teams"),
    ];
    let mut baseline = serde_json::Map::new();
    for (name, path) in baselines {
        let (mut samples, errors) = run(vec![format!("{base}{path}")], args.baseline).await?;
        let mut took: Vec<Duration> = samples.drain(..).map(|(_, d)| d).collect();
        let mut s = maintainpro_bench::latency_summary(&mut took);
        s["requests_per_second"] = json!(took.len() as f64 / args.baseline.as_secs_f64());
        s["errors"] = json!(errors);
        baseline.insert(name.to_owned(), s);
    }
    let urls: Vec<String> = queries
        .iter()
        .map(|(_, q)| format!("{base}/api/v1/work-orders?{q}"))
        .collect();
    let (all, errors) = run(urls.clone(), args.duration).await?;
    let seconds = args.duration.as_secs_f64();
    let mut overall: Vec<Duration> = all.iter().map(|(_, d)| *d).collect();
    let mut per_query = serde_json::Map::new();
    for (k, (name, q)) in queries.iter().enumerate() {
        let mut mine: Vec<Duration> = all
            .iter()
            .filter(|(w, _)| *w == k)
            .map(|(_, d)| *d)
            .collect();
        let mut s = maintainpro_bench::latency_summary(&mut mine);
        s["query"] = json!(q);
        s["serial"] = serial.remove(*name).unwrap_or_default();
        per_query.insert((*name).to_owned(), s);
    }
    let total = overall.len();
    let mut by_clients = Vec::new();
    for &n in &args.also_clients {
        eprintln!("{n} clients");
        let (samples, errors) = load(
            clients,
            &http,
            &token,
            args,
            n,
            Arc::new(urls.clone()),
            args.duration,
        )
        .await?;
        let mut took: Vec<Duration> = samples.into_iter().map(|(_, d)| d).collect();
        let mut s = maintainpro_bench::latency_summary(&mut took);
        s["clients"] = json!(n);
        s["requests_per_second"] = json!(took.len() as f64 / seconds);
        s["errors"] = json!(errors);
        by_clients.push(s);
    }
    let report = json!({
        "work_orders": args.work_orders,
        "assets": args.assets,
        "pool": args.pool,
        "by_clients": by_clients,
        "clients": args.clients,
        "seconds": seconds,
        "requests_per_second": total as f64 / seconds,
        "errors": errors,
        "latency": maintainpro_bench::latency_summary(&mut overall),
        "per_query": per_query,
        "searches_serial_only": searches,
        "baselines": baseline,
    });
    services.stop().await;
    Ok(report)
}

/// `count` keep-alive clients on the clients' runtime, each sending GETs to the next of
/// `urls` in turn for `--warmup` and then `duration`. The samples of the measured part
/// (index of the URL, latency) and the number of failed requests in it.
async fn load(
    clients: &Runtime,
    http: &reqwest::Client,
    token: &str,
    args: &Args,
    count: usize,
    urls: Arc<Vec<String>>,
    duration: Duration,
) -> anyhow::Result<(Vec<(usize, Duration)>, u64)> {
    // Parsed and formatted once, as a load generator such as wrk does: the clients' CPU comes
    // out of the server's two cores.
    let urls: Arc<Vec<reqwest::Url>> = Arc::new(
        urls.iter()
            .map(|u| reqwest::Url::parse(u))
            .collect::<Result<_, _>>()?,
    );
    let mut authorization = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))?;
    authorization.set_sensitive(true);
    let start = Instant::now() + args.warmup;
    let end = start + duration;
    let mut tasks = Vec::new();
    for c in 0..count {
        let (http, authorization, urls) = (http.clone(), authorization.clone(), Arc::clone(&urls));
        tasks.push(clients.spawn(async move {
            let mut samples: Vec<(usize, Duration)> = Vec::new();
            let mut errors = 0u64;
            let mut i = c;
            while Instant::now() < end {
                let which = i % urls.len();
                i += 1;
                let sent = Instant::now();
                let request = http
                    .get(urls[which].clone())
                    .header(reqwest::header::AUTHORIZATION, authorization.clone());
                let ok = match request.send().await {
                    Ok(res) => res.status() == 200 && res.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let took = sent.elapsed();
                if sent >= start {
                    if ok {
                        samples.push((which, took));
                    } else {
                        errors += 1;
                    }
                }
            }
            (samples, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (samples, e) = t.await?;
        all.extend(samples);
        errors += e;
    }
    Ok((all, errors))
}
