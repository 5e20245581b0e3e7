//! Benchmark programs for MaintAInPro, run by `bench/run.sh`; results go to BENCHMARKS.md.
//!
//! # Layout
//! - `bin/outbox-bench.rs`: edge outbox append throughput under each fsync policy.
//! - `bin/ingest-bench.rs`: ingest end to end (load generator -> Mosquitto -> ingest ->
//!   PostgreSQL) against raw binary COPY of the same rows, and latency at a fixed rate.
//! - `bin/edge-bench.rs`: the edge agent polling 1,000 tags on 10 simulated PLCs: resident
//!   memory, CPU, and Modbus requests per cycle against the coalesced minimum.
//! - `bin/breach-bench.rs`: from the MQTT publish of a breaching reading to the commit of the
//!   work order it opens, idle and under background load, with ingest and rules in-process.
//! - `benches/`: criterion benchmarks of the rules engine and of the backtest replay.
//! - `bin/cmms-bench.rs`: filtered work-order lists under load, 1M work orders.
//! - `bin/history-bench.rs`: one tag over 24 hours in 1,000 points with 100M readings stored,
//!   and COPY into the empty and the full table.
//! - `bin/index-bench.rs`: COPY into the readings table under each index layout, on one
//!   connection and on three: rows per second, WAL per row, index size.
//! - this library: small helpers shared by the programs (process and machine CPU from
//!   `/proc`, a private Mosquitto on a free loopback port, a migrated throwaway database and
//!   its server settings, binary COPY of readings, latency percentiles).
//!
//! Benchmarks only touch 127.0.0.1 and stop by themselves.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Mosquitto started for one benchmark on a free loopback port; killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    pub url: String,
}

impl Mosquitto {
    /// Starts `binary` with its configuration in `dir`, plus `extra` configuration lines, and
    /// waits until it accepts connections.
    pub fn start(binary: &Path, dir: &Path, extra: &str) -> std::io::Result<Mosquitto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}"),
        )?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot start {}: {e}", binary.display()))
            })?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mosquitto {
            child,
            url: format!("mqtt://127.0.0.1:{port}"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) and resident memory of a process, read from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_bytes: u64,
}

/// Samples `/proc/<pid>`; `None` once the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks_per_s = 100u64; // USER_HZ on Linux
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(ProcSample {
        cpu: Duration::from_millis((utime + stime) * 1000 / ticks_per_s),
        rss_bytes: rss_kb * 1024,
    })
}

/// CPU time (user + system) of a process and of its direct children, such as a PostgreSQL
/// server and its backends; children that have exited are not counted.
pub fn tree_cpu(pid: u32) -> Duration {
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| parent(child) == Some(pid));
    std::iter::once(pid)
        .chain(children)
        .filter_map(sample)
        .map(|s| s.cpu)
        .sum()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time of the whole machine since boot, summed over its cores, from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineCpu {
    /// Not idle and not waiting for I/O.
    pub busy: Duration,
    pub total: Duration,
}

pub fn machine_cpu() -> Option<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let ticks_per_s = 100u64; // USER_HZ on Linux
    Some(MachineCpu {
        busy: Duration::from_millis((total - idle) * 1000 / ticks_per_s),
        total: Duration::from_millis(total * 1000 / ticks_per_s),
    })
}

/// Logs warnings and errors (or what `RUST_LOG` asks for) to standard error, so that standard
/// output carries only the benchmark's report.
pub fn log_warnings_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// A throwaway PostgreSQL cluster (fsync on: the durability production has) with a migrated
/// database `bench` and random role passwords. The cluster stops when dropped.
pub async fn migrated_cluster()
-> anyhow::Result<(migrations::throwaway::Cluster, migrations::DatabaseUrls)> {
    let cluster = migrations::throwaway::Cluster::start(migrations::throwaway::ClusterOptions {
        fsync: true,
    })
    .await?;
    let secrets = migrations::RoleSecrets {
        owner_password: uuid::Uuid::new_v4().simple().to_string(),
        app_password: uuid::Uuid::new_v4().simple().to_string(),
    };
    let urls = migrations::bootstrap(&cluster.admin_url(), "bench", &secrets).await?;
    migrations::migrate(&urls.owner_url).await?;
    Ok((cluster, urls))
}

/// `name=value`, both of the characters setting names and plain values use, so that they can
/// be written into `ALTER SYSTEM` as they are.
pub fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: write a setting as name=value"))?;
    let plain = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
    };
    if !plain(name, &['.']) {
        return Err(format!("{name:?} is not a setting name"));
    }
    if !plain(value, &['.', '-']) {
        return Err(format!(
            "{value:?}: a value may hold letters, digits, '_', '.' and '-' only"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Makes `settings` with `ALTER SYSTEM` and restarts `cluster` to apply them (nothing when
/// there are none).
pub async fn apply_settings(
    cluster: &mut migrations::throwaway::Cluster,
    settings: &[(String, String)],
) -> anyhow::Result<()> {
    if settings.is_empty() {
        return Ok(());
    }
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.admin_url()).await?;
    for (name, value) in settings {
        sqlx::raw_sql(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .execute(&mut admin)
            .await?;
    }
    sqlx::Connection::close(admin).await?;
    cluster.restart().await?;
    eprintln!("PostgreSQL restarted with {settings:?}");
    Ok(())
}

/// The password the API benchmarks give their seeded admin.
pub const BENCH_PASSWORD: &str = "bench password 2026 long enough";

/// Signs in to the API at `base` as the seeded admin of organisation `bench`; answers the
/// access token.
pub async fn bench_login(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let login: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({
            "tenant": "bench",
            "email": server::demo::DEMO_EMAIL,
            "password": BENCH_PASSWORD,
        }))
        .send()
        .await?
        .json()
        .await?;
    login["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no access token in the login answer: {login}"))
}

/// Latency percentiles of `samples` (sorted in place), in milliseconds.
pub fn latency_summary(samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    let pick = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    serde_json::json!({
        "requests": samples.len(),
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": samples.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    })
}

/// COPYs `rows` in binary with `statement` (a `COPY ... FROM STDIN (FORMAT binary)` naming
/// `tag_id, ts, value, quality`) on `connection`, inside whatever transaction it has open.
pub async fn copy_binary(
    connection: &mut sqlx::PgConnection,
    statement: &str,
    rows: &[ingest::copy::Row],
) -> anyhow::Result<()> {
    let mut copy_in = connection.copy_in_raw(statement).await?;
    copy_in.send(ingest::copy::encode(rows.iter())).await?;
    copy_in.finish().await?;
    Ok(())
}

/// COPYs `rows` in binary with `statement`, `commit_rows` to a transaction.
pub async fn copy_in_commits(
    connection: &mut sqlx::PgConnection,
    statement: &str,
    rows: &[ingest::copy::Row],
    commit_rows: usize,
) -> anyhow::Result<()> {
    for chunk in rows.chunks(commit_rows.max(1)) {
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
        copy_binary(&mut tx, statement, chunk).await?;
        tx.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_this_process() {
        let s = super::sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_bytes > 0);
    }

    #[test]
    fn reads_the_machine_and_a_process_tree() {
        let m = super::machine_cpu().expect("/proc/stat");
        assert!(m.total >= m.busy && m.total > std::time::Duration::ZERO);
        // The process's own time first: CPU time only grows, so the tree's, read after it,
        // cannot be less (read the other way round, the process may run in between).
        let own = super::sample(std::process::id())
            .expect("own /proc entry")
            .cpu;
        assert!(super::tree_cpu(std::process::id()) >= own);
    }
}
