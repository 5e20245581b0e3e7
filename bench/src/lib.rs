//! Benchmark programs for MaintAInPro, run by `bench/run.sh`; results go to BENCHMARKS.md.
//!
//! # Layout
//! - `bin/outbox-bench.rs`: edge outbox append throughput under each fsync policy.
//! - `bin/ingest-bench.rs`: ingest end to end (load generator -> Mosquitto -> ingest ->
//!   PostgreSQL) against raw binary COPY of the same rows, and latency at a fixed rate.
//! - `bin/edge-bench.rs`: the edge agent polling 1,000 tags on 10 simulated PLCs: resident
//!   memory, CPU, and Modbus requests per cycle against the coalesced minimum.
//! - this library: small helpers shared by the programs (process sampling from `/proc`).
//!
//! Benchmarks only touch 127.0.0.1 and stop by themselves.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    #[test]
    fn samples_this_process() {
        let s = super::sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_bytes > 0);
    }
}
