//! Edge outbox append throughput: readings per second sealed and written, per fsync policy and
//! batch size, on this machine's disk. Baseline in the same run: raw appends of the same bytes
//! to one file with the same fsync cadence, without the outbox's framing and bookkeeping.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Parser;
use edge_agent::outbox::{FsyncPolicy, Outbox, OutboxConfig};
use model::wire::Batch;
use model::{GatewayId, Quality, Reading, TagName, Timestamp};

#[derive(Debug, Parser)]
struct Args {
    /// How long each case runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Directory for the outbox files (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn readings(n: usize, tags: &[TagName], t0: i64) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            tag: tags[i % tags.len()].clone(),
            ts: Timestamp::from_micros(t0 + i as i64),
            value: i as f64 * 0.5,
            quality: Quality::Good,
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tags: Vec<TagName> = (0..1000)
        .map(|i| TagName::parse(format!("line-1/press-{}.signal_{}", i / 100, i % 100)))
        .collect::<Result<_, _>>()?;
    let gateway = GatewayId::parse("bench-gw")?;
    println!("case,fsync,batch_readings,batches,readings_per_s,baseline_readings_per_s,ratio");
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Interval] {
        for batch in [100usize, 1000, 5000] {
            let tmp = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
            let config = OutboxConfig {
                dir: tmp.path().join("outbox"),
                max_bytes: 1 << 40,
                segment_bytes: 64 << 20,
                fsync,
                fsync_interval: Duration::from_secs(1),
                replay_batches_per_second: 50,
            };
            let (mut outbox, _) = Outbox::open_dir(config, gateway.clone(), 1)?;
            let data = readings(batch, &tags, 0);
            let start = Instant::now();
            let mut last_sync = start;
            let mut batches = 0u64;
            while start.elapsed() < args.duration {
                let sealed = outbox.append(&data)?;
                batches += 1;
                // Acknowledge as a broker would, so segments are deleted as in production.
                if batches > 16 {
                    outbox.ack(sealed.seq - 16)?;
                }
                if fsync == FsyncPolicy::Interval && last_sync.elapsed() >= Duration::from_secs(1) {
                    outbox.sync()?;
                    last_sync = Instant::now();
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let rate = batches as f64 * batch as f64 / secs;

            // Baseline: the same encoded batches appended to one file, synced alike.
            let payload = Batch::from_readings(gateway.clone(), 1, &data).encode();
            let mut file = std::fs::File::create(tmp.path().join("raw"))?;
            let start = Instant::now();
            let mut last_sync = start;
            let mut raw_batches = 0u64;
            while start.elapsed() < args.duration {
                file.write_all(&payload)?;
                raw_batches += 1;
                if fsync == FsyncPolicy::Always || last_sync.elapsed() >= Duration::from_secs(1) {
                    file.sync_data()?;
                    last_sync = Instant::now();
                }
            }
            let raw_rate = raw_batches as f64 * batch as f64 / start.elapsed().as_secs_f64();
            println!(
                "outbox_append,{fsync:?},{batch},{batches},{rate:.0},{raw_rate:.0},{:.2}",
                rate / raw_rate
            );
        }
    }
    Ok(())
}
