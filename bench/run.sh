#!/usr/bin/env bash
# Runs the benchmarks in release mode and prints their results; BENCHMARKS.md records them.
#   bench/run.sh [outbox|ingest|index|history|edge|breach|cmms|rules|backtest|queues|all]
# The benchmarks start PostgreSQL from the machine's binaries, or from PG_BIN_DIR when set
# (bench/postgresql17.sh prepares PostgreSQL 17 there).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
if [ "$what" != rules ] && [ "$what" != backtest ] && [ "$what" != queues ]; then
    cargo build --release -p edge-agent -p maintainpro-bench
fi
if [ "$what" = outbox ] || [ "$what" = all ]; then
    echo "== outbox append throughput"
    target/release/outbox-bench --duration 5s
fi
if [ "$what" = ingest ] || [ "$what" = all ]; then
    echo "== ingest end to end vs raw COPY, 10,000 tags"
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    # WAL buffers as docs/CONFIGURATION.md recommends for ingest (PostgreSQL's default is 4 MB
    # with the default shared_buffers); both the ingest and the raw COPY runs use them.
    target/release/ingest-bench --mosquitto "$MOSQUITTO" --pg-setting wal_buffers=64MB
fi
if [ "$what" = index ] || [ "$what" = all ]; then
    echo "== where a reading's COPY goes: the readings table under each index layout"
    target/release/index-bench --pg-setting wal_buffers=64MB
fi
if [ "$what" = history ] || [ "$what" = all ]; then
    echo "== readings layout at 100M rows: one tag over 24 h in 1,000 points, COPY empty vs full"
    target/release/history-bench
fi
if [ "$what" = edge ] || [ "$what" = all ]; then
    echo "== edge agent: 1,000 tags at 1 s on 10 Modbus PLCs"
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    target/release/edge-bench --duration 60s --warmup 10s --mosquitto "$MOSQUITTO"
fi
if [ "$what" = breach ] || [ "$what" = all ]; then
    echo "== breach to committed work order, idle and at half the ingest benchmark's load"
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    target/release/breach-bench --mosquitto "$MOSQUITTO"
fi
if [ "$what" = cmms ] || [ "$what" = all ]; then
    echo "== CMMS API: filtered work-order lists, 1,000,000 work orders, 100,000 assets"
    target/release/cmms-bench --duration 30s --warmup 5s --also-clients 8,16,64
fi
if [ "$what" = rules ] || [ "$what" = all ]; then
    echo "== rules engine: readings evaluated per second on one core, per rule kind"
    cargo bench -p maintainpro-bench --bench rules
fi
if [ "$what" = backtest ] || [ "$what" = all ]; then
    echo "== backtest replay: readings per second through the replay of \`rules backtest\`"
    cargo bench -p maintainpro-bench --bench backtest
fi
if [ "$what" = queues ] || [ "$what" = all ]; then
    echo "== bounded queues between two stages: ingest's (crossbeam's ring) against tokio mpsc and crossbeam's channel"
    cargo bench -p maintainpro-bench --bench queues
fi
