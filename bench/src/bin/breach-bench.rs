//! Breach to committed work order: how long from the MQTT publish of a breaching reading to
//! the commit of the work order it opens, with ingest and the rules engine running in-process
//! as the server runs them (`server::Services`, roles ingest and rules), and again while the
//! load generator keeps ingest busy with background readings.
//!
//! The plant: one tenant, one gateway, 1,000 assets with 10 tags each. Nine tags per asset
//! carry the background load; the tenth is a probe under a threshold rule with no on-delay.
//! Each probe is one reading above the limit, published as its own batch (its own sequence
//! number) on a probe tag of an asset no earlier probe used, so each opens a new work order.
//! Probes are 100 to 200 ms apart; the first ones of each phase are a warm-up.
//!
//! The clock stops when the work-order row is committed: the benchmark installs (as the
//! database owner, in its own throwaway database only) an `AFTER INSERT` trigger on
//! `work_orders` that notifies a channel, and a dedicated connection listening on it stamps
//! each notification on arrival. A second trigger, on the probes' ledger rows in
//! `ingest_batches`, shows when ingest committed the probe; both triggers send their
//! transaction's start time. Ingest hands readings to the rules before it stores them, so the
//! latency splits into two legs (to the start of the work-order transaction, and that
//! transaction), and the probe's own storage is reported beside them (see [`Legs`]).
//!
//! Reported per phase besides the latencies and their legs: what the ingest transaction that
//! stored each probe carried (from the ledger), and a single-row commit's latency measured
//! just before the probes (the floor under the work-order commit, and under the probe's own).
//! For the
//! loaded phase: the background readings stored per second, the CPU each part used, and the
//! checkpoints and autovacuum runs on the readings tables during the measurement.
//!
//! Everything runs on 127.0.0.1: a throwaway PostgreSQL cluster with fsync on and a private
//! Mosquitto, both removed at the end. The server side has its own two-thread runtime; the
//! load generator and the probes (publisher and listener) each have their own thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use maintainpro_bench::{MachineCpu, Mosquitto, machine_cpu, sample, tree_cpu};
use model::wire::Batch;
use model::{GatewayId, Quality, Reading, TagName, TenantId, Timestamp};
use rules::RuleSet;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use server::config::{DatabaseConfig, MetricsConfig, Role, RulesConfig, ServerConfig};
use server::services::Services;
use simulators::load::{LoadSpec, publish};
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::runtime::Runtime;
use uuid::Uuid;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    assets: usize,
    /// Background tags per asset; each asset has one probe tag besides.
    #[arg(long, default_value_t = 9)]
    background_tags_per_asset: usize,
    /// Measured probes per phase.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// Probes before each phase's measured ones, not counted.
    #[arg(long, default_value_t = 20)]
    warmup_probes: usize,
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    min_spacing: Duration,
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    max_spacing: Duration,
    /// Background readings per second in the loaded phase: at least half of what ingest
    /// stored end to end in the ingest benchmark (195,540 to 226,855/s, BENCHMARKS.md).
    #[arg(long, default_value_t = 105_000.0)]
    load_rate: f64,
    #[arg(long, default_value_t = 1000)]
    readings_per_batch: usize,
    /// Background load before the loaded phase's warm-up probes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    load_warmup: Duration,
    #[arg(long, default_value = "mosquitto")]
    mosquitto: std::path::PathBuf,
}

/// Sequence numbers of probe batches start here, far above the load generator's.
const PROBE_SEQ_BASE: u64 = 1 << 40;
const BATCH_CHANNEL: &str = "bench_probe_batches";
const WORK_ORDER_CHANNEL: &str = "bench_probe_work_orders";
const PROBE_RULE: &str = "probe-bearing-hot";
/// Probes read this; the limit is 90.
const BREACH_VALUE: f64 = 120.0;

const RULES: &str = r#"
version = 1

[[rule]]
id = "probe-bearing-hot"
tags = ["*.bearing_temp"]
severity = "high"
failure_mode = "bearing-overheat"

[rule.threshold]
above = 90.0
clear_below = 80.0

[rule.work_order]
title = "Bearing overheating on {asset}"
description = "{tag} reached {value} {unit} (limit {limit}) at {at}."
checklist = ["Check lubrication", "Measure bearing play"]

# The background tags are evaluated as well; the load generator's values (0 to 99.9) never
# reach this limit.
[[rule]]
id = "signal-high"
tags = ["*.signal_*"]
severity = "low"
failure_mode = "signal-high"

[rule.threshold]
above = 1000.0
clear_below = 900.0

[rule.work_order]
title = "{tag} high on {asset}"
"#;

/// Installed as the owner: notifications when a probe's batch and a work order are inserted,
/// delivered when their transaction commits. Each carries its transaction's start time
/// (`now()`), in microseconds since the epoch. And a table for the commit-latency floor.
const TRIGGERS: &str = r#"
CREATE TABLE bench_commits (n integer NOT NULL);

CREATE FUNCTION bench_micros(t timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$ SELECT (extract(epoch FROM t) * 1000000)::bigint $$;

CREATE FUNCTION bench_probe_batch_stored() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_probe_batches', NEW.seq || ' ' || bench_micros(now()));
    RETURN NULL;
END
$$;
CREATE TRIGGER bench_probe_batch_stored AFTER INSERT ON ingest_batches
    FOR EACH ROW WHEN (NEW.seq >= 1099511627776) EXECUTE FUNCTION bench_probe_batch_stored();

CREATE FUNCTION bench_work_order_opened() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_probe_work_orders',
        coalesce(NEW.rule_id, '-') || ' ' || NEW.asset_id || ' ' || bench_micros(now()));
    RETURN NULL;
END
$$;
CREATE TRIGGER bench_work_order_opened AFTER INSERT ON work_orders
    FOR EACH ROW EXECUTE FUNCTION bench_work_order_opened();
"#;

/// A notification, stamped when it arrived.
#[derive(Debug, Clone, Copy)]
struct Notice {
    arrived: Instant,
    /// Wall clock at arrival, microseconds since the epoch.
    arrived_wall: i64,
    /// The start of the transaction that sent it.
    transaction_began: i64,
}

/// What the listener has heard: probe batches by sequence number, work orders of the probe
/// rule by asset.
#[derive(Debug, Default)]
struct Heard {
    batches: HashMap<u64, Notice>,
    work_orders: HashMap<Uuid, Notice>,
    /// Work orders of other rules: there must be none.
    other_work_orders: u64,
}

type Shared = Arc<Mutex<Heard>>;

fn lock(heard: &Shared) -> std::sync::MutexGuard<'_, Heard> {
    heard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Listens on both channels until the task is dropped. Signals `ready` once listening.
async fn listen(
    url: String,
    heard: Shared,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut listener = PgListener::connect(&url).await?;
    listener
        .listen_all([BATCH_CHANNEL, WORK_ORDER_CHANNEL])
        .await?;
    let _ = ready.send(());
    loop {
        let notification = listener.recv().await?;
        let arrived = Instant::now();
        let arrived_wall = Timestamp::now().as_micros();
        let fields: Vec<&str> = notification.payload().split(' ').collect();
        let began = |i: usize| -> anyhow::Result<i64> {
            Ok(fields
                .get(i)
                .ok_or_else(|| anyhow::anyhow!("short payload {:?}", notification.payload()))?
                .parse()?)
        };
        let mut heard = lock(&heard);
        match notification.channel() {
            BATCH_CHANNEL => {
                let seq: u64 = fields.first().copied().unwrap_or_default().parse()?;
                heard.batches.insert(
                    seq,
                    Notice {
                        arrived,
                        arrived_wall,
                        transaction_began: began(1)?,
                    },
                );
            }
            _ => {
                if fields.first() != Some(&PROBE_RULE) {
                    heard.other_work_orders += 1;
                    continue;
                }
                let asset: Uuid = fields.get(1).copied().unwrap_or_default().parse()?;
                heard.work_orders.insert(
                    asset,
                    Notice {
                        arrived,
                        arrived_wall,
                        transaction_began: began(2)?,
                    },
                );
            }
        }
    }
}

/// The probes' MQTT connection, driven on the probe thread.
#[derive(Debug, Clone)]
struct Prober {
    client: AsyncClient,
    topic: String,
    gateway: GatewayId,
    /// The task driving the connection.
    driver: tokio::task::AbortHandle,
}

impl Prober {
    async fn connect(broker: &str, tenant: TenantId, gateway: GatewayId) -> anyhow::Result<Self> {
        let (host, port) = model::topic::broker_address(broker)
            .map_err(|_| anyhow::anyhow!("bad broker URL {broker}"))?;
        let mut options = MqttOptions::new("breach-bench-probe", host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(
                model::wire::MAX_MESSAGE_BYTES + 4096,
                model::wire::MAX_MESSAGE_BYTES + 4096,
            );
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let driver = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("probe connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .abort_handle();
        tokio::time::timeout(Duration::from_secs(10), connected).await??;
        Ok(Self {
            client,
            topic: model::topic::readings(tenant, &gateway),
            gateway,
            driver,
        })
    }

    async fn send(&self, seq: u64, readings: &[Reading]) -> anyhow::Result<()> {
        let payload = Batch::from_readings(self.gateway.clone(), seq, readings).encode();
        self.client
            .publish(&self.topic, QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }
}

/// One probe: its asset (index), the probe tag of that asset, and its batch's sequence number.
#[derive(Debug, Clone)]
struct Probe {
    asset: Uuid,
    tag: TagName,
    seq: u64,
}

/// A probe as sent: when its publish began.
#[derive(Debug, Clone)]
struct Sent {
    probe: Probe,
    at: Instant,
    at_wall: i64,
}

/// Publishes `probes` one at a time, `spacing(i)` apart.
async fn send_probes(
    prober: Prober,
    probes: Vec<Probe>,
    spacing: impl Fn(usize) -> Duration,
) -> anyhow::Result<Vec<Sent>> {
    let mut sent = Vec::with_capacity(probes.len());
    let mut due = tokio::time::Instant::now();
    for (i, probe) in probes.into_iter().enumerate() {
        tokio::time::sleep_until(due).await;
        let reading = Reading {
            tag: probe.tag.clone(),
            ts: Timestamp::now(),
            value: BREACH_VALUE,
            quality: Quality::Good,
        };
        let (at, at_wall) = (Instant::now(), Timestamp::now().as_micros());
        prober.send(probe.seq, &[reading]).await?;
        sent.push(Sent { probe, at, at_wall });
        due += spacing(i);
    }
    Ok(sent)
}

/// One probe's way, from the wall clock and the transactions' start times, in microseconds.
/// `to_work_order` and `work_order` add up to the latency; the probe's storage runs beside
/// them.
#[derive(Debug, Clone, Copy)]
struct Legs {
    /// Publish to the start of the work-order transaction: broker, ingest's decode queue and
    /// stage, the rules channel, the engine, the pager, and waiting for a pool connection.
    to_work_order: i64,
    /// The work-order service's transaction, through its commit.
    work_order: i64,
    /// Publish to the commit of the ingest transaction that stored the probe.
    to_ingest_commit: i64,
    /// That transaction, through its commit (with the rest of its group).
    ingest: i64,
}

/// One measured probe.
#[derive(Debug, Clone, Copy)]
struct Sample {
    seq: u64,
    latency: Duration,
    legs: Legs,
}

/// Waits until every probe's work order and ledger row were heard (a work order may commit
/// before its probe is stored), then pairs them up.
async fn collect(heard: &Shared, sent: &[Sent], limit: Duration) -> anyhow::Result<Vec<Sample>> {
    let deadline = Instant::now() + limit;
    loop {
        {
            let heard = lock(heard);
            if sent.iter().all(|s| {
                heard.work_orders.contains_key(&s.probe.asset)
                    && heard.batches.contains_key(&s.probe.seq)
            }) {
                return sent
                    .iter()
                    .map(|s| {
                        let wo = heard.work_orders[&s.probe.asset];
                        let batch = heard.batches.get(&s.probe.seq).ok_or_else(|| {
                            anyhow::anyhow!("no ledger notification for probe {}", s.probe.seq)
                        })?;
                        Ok(Sample {
                            seq: s.probe.seq,
                            latency: wo.arrived.duration_since(s.at),
                            legs: Legs {
                                to_work_order: wo.transaction_began - s.at_wall,
                                work_order: wo.arrived_wall - wo.transaction_began,
                                to_ingest_commit: batch.arrived_wall - s.at_wall,
                                ingest: batch.arrived_wall - batch.transaction_began,
                            },
                        })
                    })
                    .collect();
            }
            if Instant::now() >= deadline {
                let stored = sent
                    .iter()
                    .filter(|s| heard.batches.contains_key(&s.probe.seq))
                    .count();
                let opened = sent
                    .iter()
                    .filter(|s| heard.work_orders.contains_key(&s.probe.asset))
                    .count();
                anyhow::bail!(
                    "after {limit:?}: {stored} of {} probes stored, {opened} work orders opened",
                    sent.len()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value at quantile `q` (nearest rank) of sorted values.
fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Microseconds as milliseconds, to 10 us.
fn micros_ms(micros: f64) -> f64 {
    (micros / 10.0).round() / 100.0
}

/// The mean, p50 and p99 of one leg, in milliseconds. Means add up to the mean latency.
fn leg_ms(mut values: Vec<i64>) -> serde_json::Value {
    values.sort_unstable();
    let mean = values.iter().sum::<i64>() as f64 / values.len().max(1) as f64;
    let at = |q| micros_ms(quantile(&values, q) as f64);
    serde_json::json!({ "mean": micros_ms(mean), "p50": at(0.5), "p99": at(0.99) })
}

/// A phase's figures: the latencies, their legs, what the probes' ingest transactions carried,
/// and the commit latency of the cluster measured just before.
fn summarise(
    samples: &[Sample],
    groups: &HashMap<u64, Group>,
    commits: &[Duration],
) -> serde_json::Value {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let legs = |f: fn(&Legs) -> i64| leg_ms(samples.iter().map(|s| f(&s.legs)).collect());
    let mut group_readings: Vec<i64> = samples
        .iter()
        .filter_map(|s| groups.get(&s.seq))
        .map(|g| g.readings)
        .collect();
    group_readings.sort_unstable();
    let mut group_batches: Vec<i64> = samples
        .iter()
        .filter_map(|s| groups.get(&s.seq))
        .map(|g| g.batches)
        .collect();
    group_batches.sort_unstable();
    let mut commits = commits.to_vec();
    commits.sort_unstable();
    serde_json::json!({
        "probes": samples.len(),
        "mean_ms": ms(latencies.iter().sum::<Duration>() / latencies.len().max(1) as u32),
        "p50_ms": ms(quantile(&latencies, 0.50)),
        "p95_ms": ms(quantile(&latencies, 0.95)),
        "p99_ms": ms(quantile(&latencies, 0.99)),
        "max_ms": ms(quantile(&latencies, 1.0)),
        "min_ms": ms(quantile(&latencies, 0.0)),
        "legs_ms": {
            "publish_to_work_order_transaction": legs(|l| l.to_work_order),
            "work_order_transaction": legs(|l| l.work_order),
        },
        "probe_storage_ms": {
            "publish_to_ingest_commit": legs(|l| l.to_ingest_commit),
            "ingest_transaction": legs(|l| l.ingest),
        },
        "work_order_committed_before_probe_stored": samples
            .iter()
            .filter(|s| s.legs.to_work_order + s.legs.work_order < s.legs.to_ingest_commit)
            .count(),
        "probe_ingest_transaction_batches": {
            "p50": quantile(&group_batches, 0.5),
            "p99": quantile(&group_batches, 0.99),
            "max": quantile(&group_batches, 1.0),
        },
        "probe_ingest_transaction_readings": {
            "p50": quantile(&group_readings, 0.5),
            "p99": quantile(&group_readings, 0.99),
            "max": quantile(&group_readings, 1.0),
        },
        "single_row_commit_ms": {
            "p50": ms(quantile(&commits, 0.5)),
            "p99": ms(quantile(&commits, 0.99)),
        },
    })
}

/// What the ingest transaction that stored a probe stored in all.
#[derive(Debug, Clone, Copy)]
struct Group {
    batches: i64,
    readings: i64,
}

/// The ingest transaction of each probe batch, from the ledger: the rows one transaction
/// inserts share its start time as `received_at`.
async fn ingest_groups(
    pool: &sqlx::PgPool,
    tenant: TenantId,
    seqs: &[u64],
) -> anyhow::Result<HashMap<u64, Group>> {
    let seqs: Vec<i64> = seqs.iter().map(|&s| s as i64).collect();
    let mut tx = migrations::begin_tenant(pool, tenant.as_uuid()).await?;
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT p.seq, count(*), sum(b.readings)::bigint
         FROM ingest_batches p JOIN ingest_batches b ON b.received_at = p.received_at
         WHERE p.seq = ANY($1)
         GROUP BY p.seq",
    )
    .bind(&seqs)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|(seq, batches, readings)| (seq as u64, Group { batches, readings }))
        .collect())
}

/// Checkpoints, and autovacuum or autoanalyze runs on the readings tables, so far: what can
/// stall every commit for a while.
async fn maintenance(conn: &mut sqlx::PgConnection) -> anyhow::Result<(i64, i64)> {
    let checkpoints: i64 =
        sqlx::query_scalar("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
            .fetch_one(&mut *conn)
            .await?;
    let vacuums: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint
         FROM pg_stat_all_tables WHERE relname LIKE 'readings%'",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((checkpoints, vacuums))
}

/// The floor under any commit on this cluster: `n` single-row inserts, each its own
/// transaction, on one connection, timed from the client.
async fn commit_latency(conn: &mut sqlx::PgConnection, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        sqlx::query("INSERT INTO bench_commits (n) VALUES (1)")
            .execute(&mut *conn)
            .await?;
        out.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(out)
}

/// The plant as seeded: the tenant, and per asset its id, probe tag and background tags.
#[derive(Debug)]
struct Plant {
    tenant: TenantId,
    gateway: GatewayId,
    assets: Vec<Uuid>,
    probe_tags: Vec<TagName>,
    background_tags: Vec<TagName>,
}

async fn seed(app_url: &str, args: &Args) -> anyhow::Result<Plant> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(app_url)
        .await?;
    let tenant = TenantId::new_random();
    let gateway = GatewayId::parse("bench-gw")?;
    let gateway_id = Uuid::new_v4();
    let site = Uuid::new_v4();
    let assets: Vec<Uuid> = (0..args.assets).map(|_| Uuid::new_v4()).collect();
    let asset_names: Vec<String> = (0..args.assets).map(|a| format!("Press {a:04}")).collect();
    let criticality: Vec<i16> = (0..args.assets).map(|a| 1 + (a % 5) as i16).collect();
    let probe_tags: Vec<TagName> = (0..args.assets)
        .map(|a| TagName::parse(format!("asset-{a:04}.bearing_temp")))
        .collect::<Result<_, _>>()?;
    let mut background_tags = Vec::new();
    let (mut names, mut tag_assets) = (Vec::new(), Vec::new());
    for (a, asset) in assets.iter().enumerate() {
        for n in 0..args.background_tags_per_asset {
            let tag = TagName::parse(format!("asset-{a:04}.signal_{n}"))?;
            names.push(tag.as_str().to_owned());
            tag_assets.push(*asset);
            background_tags.push(tag);
        }
        names.push(probe_tags[a].as_str().to_owned());
        tag_assets.push(*asset);
    }
    let mut tx = migrations::begin_tenant(&pool, tenant.as_uuid()).await?;
    sqlx::query("INSERT INTO tenants (id, slug, name) VALUES ($1, 'bench', 'Bench')")
        .bind(tenant.as_uuid())
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO sites (id, tenant_id, name) VALUES ($1, $2, 'Plant 1')")
        .bind(site)
        .bind(tenant.as_uuid())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO assets (id, tenant_id, site_id, name, criticality)
         SELECT id, $1, $2, name, c FROM UNNEST($3::uuid[], $4::text[], $5::smallint[]) AS t(id, name, c)",
    )
    .bind(tenant.as_uuid())
    .bind(site)
    .bind(&assets)
    .bind(&asset_names)
    .bind(&criticality)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO gateways (id, tenant_id, code, name) VALUES ($1, $2, $3, 'bench')")
        .bind(gateway_id)
        .bind(tenant.as_uuid())
        .bind(gateway.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO tags (tenant_id, gateway_id, name, asset_id, unit)
         SELECT $1, $2, n, a, 'degC' FROM UNNEST($3::text[], $4::uuid[]) AS t(n, a)",
    )
    .bind(tenant.as_uuid())
    .bind(gateway_id)
    .bind(&names)
    .bind(&tag_assets)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    pool.close().await;
    Ok(Plant {
        tenant,
        gateway,
        assets,
        probe_tags,
        background_tags,
    })
}

/// The client side: one thread for the probes (publisher and listener), one for the load
/// generator, apart from the server's runtime.
#[derive(Debug)]
struct Clients {
    probe: Runtime,
    load: Runtime,
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
    anyhow::ensure!(
        2 * (args.warmup_probes + args.probes) <= args.assets,
        "each probe needs an asset of its own: at most {} probes per phase with {} assets",
        args.assets / 2 - args.warmup_probes.min(args.assets / 2),
        args.assets
    );
    anyhow::ensure!(args.probes > 0, "--probes must be at least 1");
    anyhow::ensure!(
        args.min_spacing <= args.max_spacing,
        "--min-spacing exceeds --max-spacing"
    );
    maintainpro_bench::log_warnings_to_stderr();
    let clients = Clients {
        probe: runtime("probe", 1)?,
        load: runtime("load", 1)?,
    };
    // The server's runtime: two workers, as on the two-core reference machine.
    let server = runtime("server", 2)?;
    let report = server.block_on(run(&args, &clients))?;
    println!("{report}");
    Ok(())
}

async fn run(args: &Args, clients: &Clients) -> anyhow::Result<serde_json::Value> {
    eprintln!("starting PostgreSQL (fsync on, synchronous_commit on) and Mosquitto");
    let (cluster, urls) = maintainpro_bench::migrated_cluster().await?;
    let plant = seed(&urls.app_url, args).await?;
    {
        let owner = PgPoolOptions::new()
            .max_connections(1)
            .connect(&urls.owner_url)
            .await?;
        sqlx::raw_sql(TRIGGERS).execute(&owner).await?;
        owner.close().await;
    }
    let mut owner = <sqlx::PgConnection as sqlx::Connection>::connect(&urls.owner_url).await?;
    let dir = tempfile::tempdir()?;
    let mosquitto = Mosquitto::start(
        &args.mosquitto,
        dir.path(),
        "max_inflight_messages 100\nmax_queued_messages 100000\nset_tcp_nodelay true\n",
    )?;

    let rules = RuleSet::parse("breach-bench.toml", RULES).map_err(|d| {
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the benchmark's rule file is invalid:\n{}", text.join("\n"))
    })?;
    let config = ServerConfig {
        roles: vec![Role::Ingest, Role::Rules],
        database: DatabaseConfig {
            url: urls.app_url.clone(),
            owner_url: None,
            max_connections: 10,
            list_connections: 2,
        },
        api: None,
        ingest: Some(ingest::IngestConfig::new(mosquitto.url.clone())),
        rules: RulesConfig {
            watch: false,
            ..RulesConfig::default()
        },
        metrics: MetricsConfig::default(),
    };
    let services = Services::start(&config, Some(rules)).await?;
    anyhow::ensure!(
        services.ingest_subscribed(Duration::from_secs(30)).await,
        "ingest did not subscribe within 30 s"
    );

    let heard = Shared::default();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let listener = clients
        .probe
        .spawn(listen(urls.app_url.clone(), Arc::clone(&heard), ready_tx));
    tokio::time::timeout(Duration::from_secs(10), ready).await??;
    let prober = {
        let (broker, tenant, gateway) =
            (mosquitto.url.clone(), plant.tenant, plant.gateway.clone());
        clients
            .probe
            .spawn(async move { Prober::connect(&broker, tenant, gateway).await })
            .await??
    };

    // Every probe tag reports a normal value first, so that ingest's tag cache and the
    // engine know it, as they know a tag that reports all along.
    let normal: Vec<Reading> = plant
        .probe_tags
        .iter()
        .map(|tag| Reading {
            tag: tag.clone(),
            ts: Timestamp::now(),
            value: 50.0,
            quality: Quality::Good,
        })
        .collect();
    {
        let prober = prober.clone();
        clients
            .probe
            .spawn(async move { prober.send(PROBE_SEQ_BASE, &normal).await })
            .await??;
    }
    wait_stored(&services, plant.probe_tags.len() as u64).await?;

    let mut next_probe = 0usize;
    let mut take_probes = |n: usize| -> Vec<Probe> {
        let probes = (next_probe..next_probe + n)
            .map(|a| Probe {
                asset: plant.assets[a],
                tag: plant.probe_tags[a].clone(),
                seq: PROBE_SEQ_BASE + 1 + a as u64,
            })
            .collect();
        next_probe += n;
        probes
    };
    let (min, max) = (args.min_spacing, args.max_spacing);
    let spread = (max - min).as_micros().max(1) as u64;
    let spacing = move |i: usize| {
        // Irregular, so that probes do not lock onto the load generator's or the engine's
        // periodic work.
        let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        min + Duration::from_micros(h % spread)
    };
    let phase = |probes: Vec<Probe>| {
        let prober = prober.clone();
        let heard = Arc::clone(&heard);
        clients.probe.spawn(async move {
            let sent = send_probes(prober, probes, spacing).await?;
            collect(&heard, &sent, Duration::from_secs(60)).await
        })
    };

    eprintln!(
        "idle: {} warm-up and {} measured probes, {:?} to {:?} apart",
        args.warmup_probes, args.probes, min, max
    );
    phase(take_probes(args.warmup_probes)).await??;
    let idle_commits = commit_latency(&mut owner, args.probes).await?;
    let idle = phase(take_probes(args.probes)).await??;

    let load_for =
        args.load_warmup + max * (args.warmup_probes + args.probes) as u32 + Duration::from_secs(5);
    let load = LoadSpec {
        broker: mosquitto.url.clone(),
        tenant: plant.tenant,
        gateway: plant.gateway.clone(),
        tags: plant.background_tags.clone(),
        readings_per_batch: args.readings_per_batch,
        batches: (args.load_rate * load_for.as_secs_f64() / args.readings_per_batch as f64).ceil()
            as u64,
        first_seq: 1,
        rate: Some(args.load_rate),
        in_flight: 100,
        start: Timestamp::now(),
    };
    eprintln!(
        "loaded: {:.0} background readings/s on {} tags for {:?}; {:?} of load, then {} warm-up and {} measured probes",
        args.load_rate,
        plant.background_tags.len(),
        load_for,
        args.load_warmup,
        args.warmup_probes,
        args.probes
    );
    let load_task = {
        let load = load.clone();
        clients.load.spawn(async move { publish(&load).await })
    };
    tokio::time::sleep(args.load_warmup).await;
    phase(take_probes(args.warmup_probes)).await??;
    let loaded_commits = commit_latency(&mut owner, args.probes).await?;
    let maintenance_before = maintenance(&mut owner).await?;
    let cpu_before = CpuUse::now(cluster.pid(), mosquitto.pid());
    let (before, started) = (services.summary().readings_stored, Instant::now());
    let loaded = phase(take_probes(args.probes)).await??;
    let (after, window) = (services.summary().readings_stored, started.elapsed());
    let loaded_cpu = CpuUse::now(cluster.pid(), mosquitto.pid()).cores_since(&cpu_before, window);
    let maintenance_after = maintenance(&mut owner).await?;
    let background_rate =
        (after - before).saturating_sub(args.probes as u64) as f64 / window.as_secs_f64();
    let load_report = load_task.await??;
    let load_published_rate = load_report.readings as f64 / load_report.elapsed.as_secs_f64();
    let expected = plant.probe_tags.len() as u64 + next_probe as u64 + load_report.readings;
    wait_stored(&services, expected).await?;

    let seqs: Vec<u64> = idle.iter().chain(&loaded).map(|s| s.seq).collect();
    let groups = ingest_groups(services.pool(), plant.tenant, &seqs).await?;
    let other_work_orders = lock(&heard).other_work_orders;
    prober.driver.abort();
    listener.abort();
    sqlx::Connection::close(owner).await?;
    let summary = services.stop().await;
    drop(mosquitto);
    cluster.stop().await;
    anyhow::ensure!(
        summary.work_orders_opened == next_probe as u64 && other_work_orders == 0,
        "every probe, and nothing else, must open a work order: {} opened for {next_probe} probes, {other_work_orders} by other rules",
        summary.work_orders_opened
    );
    Ok(serde_json::json!({
        "assets": args.assets,
        "tags": plant.probe_tags.len() + plant.background_tags.len(),
        "spacing_ms": [ms(min), ms(max)],
        "idle": summarise(&idle, &groups, &idle_commits),
        "loaded": summarise(&loaded, &groups, &loaded_commits),
        "loaded_background_target_readings_per_s": args.load_rate,
        "loaded_background_stored_readings_per_s": background_rate.round(),
        "loaded_background_published_readings_per_s": load_published_rate.round(),
        "loaded_cpu_cores": loaded_cpu,
        "loaded_checkpoints": maintenance_after.0 - maintenance_before.0,
        "loaded_readings_autovacuum_or_autoanalyze_runs": maintenance_after.1 - maintenance_before.1,
        "readings_stored": summary.readings_stored,
        "duplicate_batches": summary.batches_duplicate,
        "dead_letters": summary.dead_letters,
        "alarms_raised": summary.alarms_raised,
        "work_orders_opened": summary.work_orders_opened,
    }))
}

/// CPU time used so far by the parts of the benchmark and by the machine as a whole.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    /// This process: ingest, rules, the load generator and the probes.
    bench: Duration,
    postgres: Duration,
    mosquitto: Duration,
    machine: Option<MachineCpu>,
}

impl CpuUse {
    fn now(postgres: u32, mosquitto: u32) -> Self {
        let cpu = |pid| sample(pid).map_or(Duration::ZERO, |s| s.cpu);
        Self {
            bench: cpu(std::process::id()),
            postgres: tree_cpu(postgres),
            mosquitto: cpu(mosquitto),
            machine: machine_cpu(),
        }
    }

    /// Cores used from `earlier` to this sample, over `window`.
    fn cores_since(&self, earlier: &CpuUse, window: Duration) -> serde_json::Value {
        let cores = |now: Duration, then: Duration| {
            ((now.saturating_sub(then)).as_secs_f64() / window.as_secs_f64() * 100.0).round()
                / 100.0
        };
        let machine = self
            .machine
            .zip(earlier.machine)
            .map(|(now, then)| (cores(now.busy, then.busy), cores(now.total, then.total)));
        serde_json::json!({
            "bench_process": cores(self.bench, earlier.bench),
            "postgresql": cores(self.postgres, earlier.postgres),
            "mosquitto": cores(self.mosquitto, earlier.mosquitto),
            "machine_busy": machine.map(|m| m.0),
            "machine_available": machine.map(|m| m.1),
        })
    }
}

/// Waits until ingest has stored `target` readings in all.
async fn wait_stored(services: &Services, target: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while services.summary().readings_stored < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "ingest stored {} of {target} readings within 120 s",
            services.summary().readings_stored
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
