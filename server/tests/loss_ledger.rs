//! The loss ledger: a publisher sends N numbered readings in numbered batches while ingest
//! (`maintainpro serve` with the ingest role, its own process) is killed with SIGKILL several
//! times, the broker is restarted and the database is restarted. At the end every reading is
//! stored exactly once and every batch has one row in the batch ledger.
//!
//! Everything is private to the test and on 127.0.0.1: a throwaway PostgreSQL cluster, a
//! Mosquitto with persistent sessions (the `mosquitto` binary, installed by
//! `scripts/test.sh`), and the ingest process.
//!
//! The same process also shows that a second SIGTERM ends a stop that waits for the database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use migrations::testing::TestDatabase;
use migrations::throwaway::{Cluster, ClusterOptions};
use model::wire::Batch;
use model::{GatewayId, Quality, Reading, TagName, TenantId, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use server::demo::{DEMO_GATEWAY, seed_plant};
use simulators::mosquitto::PrivateBroker;

const BATCHES: u64 = 300;
const READINGS_PER_BATCH: usize = 40;
/// Batch numbers start here; ingest's ledger is keyed by (gateway, number).
const FIRST_SEQ: u64 = 1_000;
const TAGS: [&str; 4] = [
    "press-1.bearing_temp",
    "press-1.vibration",
    "press-1.motor_current",
    "press-1.cycle_count",
];

/// Batch `n`'s readings: every reading has its own (tag, time), so duplicates would show.
fn batch(n: u64, start: Timestamp) -> Batch {
    let tags: Vec<TagName> = TAGS
        .iter()
        .map(|t| TagName::parse(*t).expect("a tag"))
        .collect();
    let readings: Vec<Reading> = (0..READINGS_PER_BATCH)
        .map(|i| {
            let k = n * READINGS_PER_BATCH as u64 + i as u64;
            Reading {
                tag: tags[i % tags.len()].clone(),
                ts: start.plus_micros(i64::try_from(k).expect("small") * 1000),
                value: k as f64,
                quality: Quality::Good,
            }
        })
        .collect();
    Batch::from_readings(
        GatewayId::parse(DEMO_GATEWAY).expect("a gateway id"),
        FIRST_SEQ + n,
        &readings,
    )
}

/// Publishes every batch with QoS 1 through broker restarts (a persistent session that
/// resends what was not acknowledged), paced so the chaos happens mid-stream. Returns the
/// count of acknowledgements seen.
fn publisher(
    broker: String,
    topic: String,
    start: Timestamp,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let (host, port) = model::topic::broker_address(&broker)?;
        let mut options = MqttOptions::new(
            format!("ledger-pub-{}", uuid::Uuid::new_v4().simple()),
            host,
            port,
        );
        options
            .set_clean_session(false)
            .set_inflight(20)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, BATCHES as usize + 16);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&acked);
        let driver = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    // The broker is restarting: rumqttc reconnects on the next poll and
                    // sends again what it had not seen acknowledged.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for n in 0..BATCHES {
            client
                .publish(&topic, QoS::AtLeastOnce, false, batch(n, start).encode())
                .await?;
            // About 9 s of publishing: longer than the faults below take, so that the last
            // kill still finds the stream in progress.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::Relaxed) < BATCHES {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the broker acknowledged {} of {BATCHES} batches",
                    acked.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver.abort();
        Ok(())
    })
}

/// The ingest process: `maintainpro serve` with only the ingest role.
struct Ingest {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Ingest {
    /// Starts ingest on `app_url` and the broker `broker` with a configuration written into
    /// `dir`, and waits until it has subscribed.
    async fn start(dir: &Path, app_url: &str, broker: &str) -> anyhow::Result<Ingest> {
        let mut ingest = Ingest {
            config: write_config(dir, app_url, broker)?,
            log: dir.join("ingest.log"),
            child: None,
            starts: 0,
        };
        ingest.spawn()?;
        ingest.subscribed().await?;
        Ok(ingest)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_maintainpro"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting maintainpro serve")?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Waits until this start's ingest has subscribed (its log says so once per start).
    async fn subscribed(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.matches("subscribed to the readings topics").count() >= self.starts {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("ingest did not subscribe within 30 s; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sigkill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            child.wait()?;
        }
        Ok(())
    }

    fn sigterm(&self) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("ingest is not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(())
    }

    /// The process's exit status, if it exits within `limit`.
    async fn exit_within(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let child = self.child.as_mut().context("ingest is not running")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(Some(status));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.sigkill();
    }
}

fn write_config(dir: &Path, app_url: &str, broker: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("ingest.toml");
    std::fs::write(
        &path,
        format!(
            "roles = [\"ingest\"]\n\n[database]\nurl = {}\nmax_connections = 4\n\n\
             [ingest]\nbroker = \"{broker}\"\nclient_id = \"ingest-ledger\"\n",
            toml::Value::String(app_url.to_owned())
        ),
    )?;
    Ok(path)
}

/// (rows, distinct (tag, time), ledger rows) stored for the tenant.
async fn counts(app_url: &str, tenant: uuid::Uuid) -> anyhow::Result<(i64, i64, i64)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(app_url)
        .await?;
    let mut tx = migrations::begin_tenant(&pool, tenant).await?;
    let counts = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenant_readings),
                (SELECT count(*) FROM (SELECT DISTINCT tag_id, ts FROM tenant_readings) d),
                (SELECT count(*) FROM ingest_batches)",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    pool.close().await;
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_is_stored_once_through_kills_and_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(ClusterOptions { fsync: true }).await?;
    let db = TestDatabase::create_on(cluster.admin_url()).await?;
    let hash = api::password::PasswordHasher::new(api::config::Secret::new("p".repeat(40)))?
        .hash("correct horse battery staple")?;
    let plant = seed_plant(&db.urls.app_url, "ledger", &hash).await?;
    let mut broker = PrivateBroker::start(dir.path())?;
    let mut ingest = Ingest::start(dir.path(), &db.urls.app_url, &broker.url()).await?;

    let topic = model::topic::readings(
        TenantId::from_uuid(plant.tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    let start = Timestamp::now().plus_micros(-3_600_000_000);
    let publishing = publisher(broker.url(), topic, start);
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));

    // Kill ingest mid-stream, twice, with a broker restart in between.
    pause(600).await;
    let (at_first_kill, _, _) = counts(&db.urls.app_url, plant.tenant).await?;
    ingest.sigkill()?;
    pause(300).await;
    ingest.spawn()?;
    ingest.subscribed().await?;
    pause(500).await;
    broker.pause()?;
    pause(800).await;
    broker.resume()?;
    ingest.subscribed().await.ok();
    pause(500).await;
    ingest.sigkill()?;
    pause(200).await;
    ingest.spawn()?;
    ingest.subscribed().await?;
    // The database goes away and comes back while ingest runs.
    pause(400).await;
    cluster.restart().await?;
    pause(500).await;
    ingest.sigkill()?;
    ingest.spawn()?;

    let (at_last_kill, _, _) = counts(&db.urls.app_url, plant.tenant).await?;
    publishing.await??;
    let expected = i64::try_from(BATCHES)? * i64::try_from(READINGS_PER_BATCH)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, _, _) = counts(&db.urls.app_url, plant.tenant)
            .await
            .unwrap_or((0, 0, 0));
        if rows >= expected {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(&ingest.log).unwrap_or_default();
            bail!("{rows} of {expected} readings stored after 60 s; ingest's log:\n{log}");
        }
        pause(200).await;
    }
    // Let anything delivered again arrive, then count once more.
    pause(1_000).await;
    let (rows, distinct, batches) = counts(&db.urls.app_url, plant.tenant).await?;
    assert_eq!(
        (rows, distinct, batches),
        (expected, expected, i64::try_from(BATCHES)?),
        "every reading once, every batch once in the ledger"
    );
    // The faults hit a stream in progress, not one already stored.
    assert!(
        0 < at_first_kill && at_last_kill < expected,
        "stored at the first kill: {at_first_kill}, at the last: {at_last_kill} of {expected}"
    );
    let log = std::fs::read_to_string(&ingest.log)?;
    assert!(ingest.starts >= 4, "ingest was restarted");
    assert!(!log.contains("panicked"), "{log}");
    drop(ingest);
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_a_stop_that_waits_for_the_database() -> anyhow::Result<()> {
    use sqlx::Connection;
    let dir = tempfile::tempdir()?;
    let db = TestDatabase::create().await?;
    let plant = seed_plant(&db.urls.app_url, "signals", "unused").await?;
    let broker = PrivateBroker::start(dir.path())?;
    let mut ingest = Ingest::start(dir.path(), &db.urls.app_url, &broker.url()).await?;
    // The ledger locked: ingest's first write waits for it, for up to its database_timeout
    // (30 s by default), and so does its stop.
    let mut lock = sqlx::PgConnection::connect(&db.urls.owner_url).await?;
    sqlx::query("BEGIN").execute(&mut lock).await?;
    sqlx::query("LOCK TABLE ingest_batches IN SHARE MODE")
        .execute(&mut lock)
        .await?;
    let topic = model::topic::readings(
        TenantId::from_uuid(plant.tenant),
        &GatewayId::parse(DEMO_GATEWAY)?,
    );
    let publishing = publisher(
        broker.url(),
        topic,
        Timestamp::now().plus_micros(-60_000_000),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE relation = 'ingest_batches'::regclass AND NOT granted",
        )
        .fetch_one(&mut lock)
        .await?;
        if waiting > 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "ingest's write did not wait for the ledger"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    ingest.sigterm()?;
    assert_eq!(
        ingest.exit_within(Duration::from_secs(1)).await?,
        None,
        "the stop waits for the write"
    );
    ingest.sigterm()?;
    let status = ingest
        .exit_within(Duration::from_secs(5))
        .await?
        .context("a second SIGTERM did not end the stop within 5 s")?;
    assert_eq!(status.code(), Some(130));
    publishing.abort();
    sqlx::query("ROLLBACK").execute(&mut lock).await?;
    lock.close().await?;
    let log = std::fs::read_to_string(&ingest.log)?;
    assert!(log.contains("second signal"), "{log}");
    Ok(())
}
