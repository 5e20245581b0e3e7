#!/usr/bin/env bash
# Runs the whole MaintAInPro test suite against real services it starts itself:
# a throwaway PostgreSQL cluster (from the installed server binaries) and Mosquitto (installed
# from the OS packages when absent), plus a Python virtual environment with pymodbus and asyncua for the
# Modbus and OPC-UA interoperability tests, openapi-spec-validator and schemathesis for the API's document
# (Python 3.10 or later). Everything is stopped and removed on exit.
#
#   scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root to run: $*"; return 1; fi
}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    log "installing Mosquitto (the test broker) from the OS packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

pg_bin=${PG_BIN_DIR:-}
if [ -z "$pg_bin" ]; then
    if command -v initdb >/dev/null 2>&1; then pg_bin=$(dirname "$(command -v initdb)");
    else pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true); fi
fi
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    log "PostgreSQL server binaries not found: install them (Debian/Ubuntu: apt-get install postgresql) or set PG_BIN_DIR"
    exit 1
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

work=$(mktemp -d)
chmod 755 "$work"
pg_pid="" mq_pid=""
cleanup() {
    [ -n "$mq_pid" ] && kill "$mq_pid" 2>/dev/null || true
    if [ -n "$pg_pid" ]; then
        run_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate -w stop >/dev/null 2>&1 || kill -9 "$pg_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# initdb and postgres refuse to run as root.
run_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    mkdir -p "$work/pg"; chown postgres "$work/pg"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pg_port=$(free_port)
pg_password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
echo "$pg_password" > "$work/pwfile"; chmod 644 "$work/pwfile"
log "starting PostgreSQL on 127.0.0.1:$pg_port"
run_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --pwfile="$work/pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --no-sync >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log"; exit 1; }
run_pg "$pg_bin/pg_ctl" -D "$work/pg" -w -l "$work/pg/server.log" \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $work/pg -c fsync=off -c max_connections=300" start >/dev/null
pg_pid=$(head -n 1 "$work/pg/postmaster.pid")

mq_port=$(free_port)
cat > "$work/mosquitto.conf" <<CONF
listener $mq_port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 100000
# Alarms are small messages: without it one waits behind the TCP ack of the batch before.
set_tcp_nodelay true
CONF
chmod 644 "$work/mosquitto.conf"
log "starting Mosquitto on 127.0.0.1:$mq_port"
"$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
mq_pid=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$mq_port") 2>/dev/null && break
    sleep 0.1
done

# pymodbus, an implementation independent of the agent's, serves the values that
# edge-agent/tests/modbus_interop.rs decodes. Pinned, so that a new release cannot change the test.
PYMODBUS_VERSION=3.16.1
# asyncua, likewise independent of the agent's OPC-UA client, serves the variables that
# edge-agent/tests/opcua_interop.rs reads over plain and encrypted channels.
ASYNCUA_VERSION=2.1.0
# openapi-spec-validator checks the served OpenAPI document against the 3.1 specification
# (tests/tests/openapi.rs).
OPENAPI_VALIDATOR_VERSION=0.9.0
# schemathesis generates requests from that document and sends them to a running API
# (tests/tests/openapi.rs): none may get a server error.
SCHEMATHESIS_VERSION=4.32.5
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "installing python3-venv (for the pymodbus test server) from the OS packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
log "installing pymodbus $PYMODBUS_VERSION, asyncua $ASYNCUA_VERSION, openapi-spec-validator and schemathesis into a virtual environment"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "pymodbus==$PYMODBUS_VERSION" \
    "asyncua==$ASYNCUA_VERSION" \
    "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION" "schemathesis==$SCHEMATHESIS_VERSION"
export MPTEST_PYTHON="$work/venv/bin/python"
export MPTEST_SCHEMATHESIS="$work/venv/bin/schemathesis"

export MPTEST_PG_ADMIN_URL="postgres://postgres:$pg_password@127.0.0.1:$pg_port/postgres"
export MPTEST_MQTT_URL="mqtt://127.0.0.1:$mq_port"
# Property tests draw the same cases on every run, so that a run's result depends on the code
# alone. Another number explores other cases; a failure found that way is saved under the
# crate's proptest-regressions/ and replayed first from then on (commit that file).
export PROPTEST_RNG_SEED=${PROPTEST_RNG_SEED:-20261203}
log "running the test suite"
cargo nextest run --workspace --all-features --no-fail-fast "$@"
