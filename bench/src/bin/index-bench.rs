//! Where a reading's COPY goes: the same rows COPYed in binary, in 10,000-row commits, into
//! tables that differ only in their index, in alternating rounds on one throwaway PostgreSQL
//! (fsync and synchronous commit on; autovacuum off, so that nothing else runs meanwhile):
//! rows per second, WAL bytes per row, the checkpoints that ran meanwhile (at PostgreSQL's
//! default `max_wal_size` the WAL of the heavier indexes brings them on), and the sizes of
//! table and index afterwards.
//!
//! The rows have ingest-bench's shape: `--tags` tags (10,000) read once a second for
//! `--seconds`, in time order, the tags of each second in id order as ingest receives a load
//! generator's batches (one case shuffles them). The cases run from no index to the readings
//! table the migrations make on stock PostgreSQL (daily partitions, the covering index); the
//! last two COPY on three connections at once, as ingest's writers do, into one table or into
//! a table each.
//!
//! Prints a JSON line per measurement, then a summary per case.

use std::time::Instant;

use clap::Parser;
use ingest::copy::Row;
use model::{Quality, Timestamp};
use serde_json::json;
use sqlx::{Connection, PgConnection};

#[derive(Debug, Parser)]
#[command(about = "COPY into the readings table under each index layout")]
struct Args {
    /// Tags, each read once a second.
    #[arg(long, default_value_t = 10_000)]
    tags: i64,
    /// Seconds of readings COPYed in each measurement (rows = tags x seconds).
    #[arg(long, default_value_t = 600)]
    seconds: i64,
    /// Rows per COPY transaction.
    #[arg(long, default_value_t = 10_000)]
    commit_rows: usize,
    /// Rounds; each measures every case once, in order.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// A PostgreSQL server setting, `name=value`, made with `ALTER SYSTEM` before the run;
    /// repeat for several. `autovacuum=off` is always made.
    #[arg(long = "pg-setting", value_parser = maintainpro_bench::parse_setting)]
    pg_settings: Vec<(String, String)>,
}

/// One table layout: its name in the output, the table, the statements that make it (none for
/// the migrations' `readings`), whether the tags of each second come shuffled, and how many
/// connections COPY at once. With `writers` above one, writer `k` takes the tags with
/// `tag_id % writers == k`, into `table` or, with `table_per_writer`, into `{table}_{k}`.
/// (Ingest's writers take whole groups of messages instead, whose tags may overlap.)
struct Case {
    name: &'static str,
    table: &'static str,
    create: &'static [&'static str],
    shuffled: bool,
    writers: usize,
    table_per_writer: bool,
}

impl Case {
    /// The tables the case writes to.
    fn tables(&self) -> Vec<String> {
        if self.table_per_writer {
            (0..self.writers)
                .map(|k| format!("{}_{k}", self.table))
                .collect()
        } else {
            vec![self.table.to_owned()]
        }
    }
}

const CASES: &[Case] = &[
    Case {
        name: "no index",
        table: "ib_none",
        create: &["CREATE TABLE ib_none (LIKE readings)"],
        shuffled: false,
        writers: 1,
        table_per_writer: false,
    },
    Case {
        name: "time first (ts, tag_id)",
        table: "ib_time",
        create: &[
            "CREATE TABLE ib_time (LIKE readings)",
            "CREATE INDEX ON ib_time (ts, tag_id)",
        ],
        shuffled: false,
        writers: 1,
        table_per_writer: false,
    },
    Case {
        name: "tag first (tag_id, ts DESC)",
        table: "ib_tag",
        create: &[
            "CREATE TABLE ib_tag (LIKE readings)",
            "CREATE INDEX ON ib_tag (tag_id, ts DESC)",
        ],
        shuffled: false,
        writers: 1,
        table_per_writer: false,
    },
    Case {
        name: "tag first, deduplicate_items off",
        table: "ib_tag_nodedup",
        create: &[
            "CREATE TABLE ib_tag_nodedup (LIKE readings)",
            "CREATE INDEX ON ib_tag_nodedup (tag_id, ts DESC) WITH (deduplicate_items = off)",
        ],
        shuffled: false,
        writers: 1,
        table_per_writer: false,
    },
    Case {
        name: "covering (tag_id, ts DESC) INCLUDE (value, quality), one table",
        table: "ib_covering",
        create: &[
            "CREATE TABLE ib_covering (LIKE readings)",
            "CREATE INDEX ON ib_covering (tag_id, ts DESC) INCLUDE (value, quality)",
        ],
        shuffled: false,
        writers: 1,
        table_per_writer: false,
    },
    Case {
        name: "tag first, time ascending (tag_id, ts)",
        table: "ib_tag_asc",
        create: &[
            "CREATE TABLE ib_tag_asc (LIKE readings)",
            "CREATE INDEX ON ib_tag_asc (tag_id, ts)",
        ],
        shuffled: false,
        writers: 1,
        table_per_writer: false,
    },
    Case {
        name: "covering, time ascending (tag_id, ts) INCLUDE (value, quality), one table",
        table: "ib_covering_asc",
        create: &[
            "CREATE TABLE ib_covering_asc (LIKE readings)",
            "CREATE INDEX ON ib_covering_asc (tag_id, ts) INCLUDE (value, quality)",
        ],
        shuffled: false,
        writers: 1,
        table_per_writer: false,
    },
    Case {
        name: "readings (the migrations': covering, daily partitions)",
        table: "readings",
        create: &[],
        shuffled: false,
        writers: 1,
        table_per_writer: false,
    },
    Case {
        name: "readings, tags of each second shuffled",
        table: "readings",
        create: &[],
        shuffled: true,
        writers: 1,
        table_per_writer: false,
    },
    Case {
        name: "covering, one table, three writers at once",
        table: "ib_covering",
        create: &[],
        shuffled: false,
        writers: 3,
        table_per_writer: false,
    },
    Case {
        name: "covering, a table per writer, three writers at once",
        table: "ib_own",
        create: &[
            "CREATE TABLE ib_own_0 (LIKE ib_covering INCLUDING INDEXES)",
            "CREATE TABLE ib_own_1 (LIKE ib_covering INCLUDING INDEXES)",
            "CREATE TABLE ib_own_2 (LIKE ib_covering INCLUDING INDEXES)",
        ],
        shuffled: false,
        writers: 3,
        table_per_writer: true,
    },
];

const MICROS_PER_DAY: i64 = 86_400_000_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.tags > 0 && args.seconds > 0 && args.commit_rows > 0 && args.rounds > 0,
        "--tags, --seconds, --commit-rows and --rounds must be at least 1"
    );
    maintainpro_bench::log_warnings_to_stderr();
    eprintln!("starting PostgreSQL (fsync on, synchronous_commit on)");
    let (mut cluster, urls) = maintainpro_bench::migrated_cluster().await?;
    let mut settings = vec![("autovacuum".to_owned(), "off".to_owned())];
    settings.extend(args.pg_settings.iter().cloned());
    maintainpro_bench::apply_settings(&mut cluster, &settings).await?;

    let mut owner = PgConnection::connect(&urls.owner_url).await?;
    let mut admin = PgConnection::connect(&cluster.admin_url()).await?;
    for case in CASES {
        for statement in case.create {
            sqlx::raw_sql(statement).execute(&mut owner).await?;
        }
    }

    // Tomorrow (UTC) from midnight: inside the partitions the migrations make ahead.
    let start = (Timestamp::now().as_micros() / MICROS_PER_DAY + 1) * MICROS_PER_DAY;
    let ordered = rows(args.tags, args.seconds, start, false);
    let shuffled = rows(args.tags, args.seconds, start, true);
    let mut results: Vec<Vec<serde_json::Value>> = vec![Vec::new(); CASES.len()];
    for round in 1..=args.rounds {
        for (case, result) in CASES.iter().zip(&mut results) {
            let rows = if case.shuffled { &shuffled } else { &ordered };
            let measured = measure(
                &mut owner,
                &mut admin,
                &urls.owner_url,
                case,
                rows,
                args.commit_rows,
            )
            .await?;
            let line = json!({ "round": round, "case": case.name, "measured": measured });
            println!("{line}");
            result.push(measured);
        }
    }

    let summary: Vec<serde_json::Value> = CASES
        .iter()
        .zip(&results)
        .map(|(case, runs)| {
            let pick =
                |key: &str| -> Vec<f64> { runs.iter().filter_map(|r| r[key].as_f64()).collect() };
            json!({
                "case": case.name,
                "rows_per_s": pick("rows_per_s"),
                "wal_bytes_per_row": pick("wal_bytes_per_row"),
                "checkpoints": pick("checkpoints"),
                "index_mb": pick("index_mb"),
            })
        })
        .collect();
    println!(
        "{}",
        json!({
            "rows": ordered.len(),
            "tags": args.tags,
            "commit_rows": args.commit_rows,
            "pg_settings": settings
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>(),
            "cases": summary,
        })
    );
    drop((owner, admin));
    cluster.stop().await;
    Ok(())
}

/// Every tag once a second for `seconds` from `start` (microseconds), in time order; within a
/// second in tag-id order or shuffled (a fixed pseudo-random order, the same in every run).
fn rows(tags: i64, seconds: i64, start: i64, shuffled: bool) -> Vec<Row> {
    let mut ids: Vec<i64> = (1..=tags).collect();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(usize::try_from(tags * seconds).unwrap_or(0));
    for s in 0..seconds {
        if shuffled {
            for i in (1..ids.len()).rev() {
                // xorshift64: enough to scatter the tags, and reproducible.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let j = usize::try_from(state % (i as u64 + 1)).unwrap_or(0);
                ids.swap(i, j);
            }
        }
        let ts = Timestamp::from_micros(start + s * 1_000_000);
        out.extend(ids.iter().map(|&tag_id| Row {
            tag_id,
            ts,
            value: (tag_id + s) as f64 * 0.5,
            quality: Quality::Good,
        }));
    }
    out
}

/// Empties the case's tables, checkpoints, and COPYs `rows` in commits of `commit_rows`, on
/// as many connections at once as the case has writers, each with its share of the tags.
async fn measure(
    owner: &mut PgConnection,
    admin: &mut PgConnection,
    owner_url: &str,
    case: &Case,
    rows: &[Row],
    commit_rows: usize,
) -> anyhow::Result<serde_json::Value> {
    let tables = case.tables();
    sqlx::raw_sql(&format!("TRUNCATE {}", tables.join(", ")))
        .execute(&mut *owner)
        .await?;
    sqlx::raw_sql("CHECKPOINT").execute(&mut *admin).await?;
    let writers = case.writers.max(1);
    let mut shares: Vec<Vec<Row>> = vec![Vec::new(); writers];
    for row in rows {
        let k = usize::try_from(row.tag_id.rem_euclid(writers as i64)).unwrap_or(0);
        shares[k].push(*row);
    }
    let mut connections = Vec::with_capacity(writers);
    for _ in 0..writers {
        connections.push(PgConnection::connect(owner_url).await?);
    }
    let wal_before = wal_bytes(owner).await?;
    let checkpoints_before = checkpoints(owner).await?;
    let started = Instant::now();
    let mut copies = tokio::task::JoinSet::new();
    for (k, (mut connection, share)) in connections.into_iter().zip(shares).enumerate() {
        let table = tables[k % tables.len()].clone();
        copies.spawn(async move {
            let statement =
                format!("COPY {table} (tag_id, ts, value, quality) FROM STDIN (FORMAT binary)");
            maintainpro_bench::copy_in_commits(&mut connection, &statement, &share, commit_rows)
                .await
        });
    }
    while let Some(copied) = copies.join_next().await {
        copied??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let wal = wal_bytes(owner).await? - wal_before;
    let checkpoints = checkpoints(owner).await? - checkpoints_before;
    let (table, index): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(pg_table_size(r)), 0)::int8, coalesce(sum(pg_indexes_size(r)), 0)::int8
         FROM (SELECT t::regclass AS r FROM unnest($1::text[]) AS t
               UNION SELECT p.relid FROM unnest($1::text[]) AS t, pg_partition_tree(t::regclass) AS p) x",
    )
    .bind(&tables)
    .fetch_one(&mut *owner)
    .await?;
    let mb = |bytes: i64| (bytes as f64 / 1e6).round();
    Ok(json!({
        "writers": writers,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "rows_per_s": (rows.len() as f64 / elapsed).round(),
        "wal_bytes_per_row": (wal / rows.len() as f64).round(),
        "checkpoints": checkpoints,
        "table_mb": mb(table),
        "index_mb": mb(index),
    }))
}

/// Checkpoints the server has started, timed or requested (by WAL volume).
async fn checkpoints(conn: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (checkpoints_timed + checkpoints_req)::int8 FROM pg_stat_bgwriter",
    )
    .fetch_one(conn)
    .await?)
}

/// The server's WAL position, in bytes.
async fn wal_bytes(conn: &mut PgConnection) -> anyhow::Result<f64> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
            .fetch_one(conn)
            .await?,
    )
}
