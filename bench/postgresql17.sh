#!/usr/bin/env bash
# Prepares PostgreSQL 17 with TimescaleDB for the benchmarks, on a Debian 12 machine whose own
# PostgreSQL is 15 and which has no TimescaleDB package: Debian 13 packages both
# (postgresql-17, postgresql-17-timescaledb). They need Debian 13's C library, so this
# downloads the packages with that library and the few others whose versions Debian 12 lacks,
# unpacks them into DIR (nothing is installed on the system), and puts small scripts in place
# of `postgres`, `initdb` and `pg_ctl` that run each with that library. A server (started with
# -p) preloads TimescaleDB. Debian's TimescaleDB is its Apache-2 edition, without compression:
# bootstrap leaves it out and `readings` is natively partitioned, as on PostgreSQL 15.
#
#   bench/postgresql17.sh DIR
#   PG_BIN_DIR=DIR/root/usr/lib/postgresql/17/bin bench/run.sh ingest
#
# Needs network access to deb.debian.org. Benchmarks only: the tests and the demo use the
# machine's PostgreSQL.
set -euo pipefail
dir=$(realpath -m "${1:?usage: bench/postgresql17.sh DIR}")
mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache" "$dir/debs"
echo "deb http://deb.debian.org/debian trixie main" > "$dir/apt/sources.list"
apt_options=(
    -o "Dir::Etc::sourcelist=$dir/apt/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache"
    -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root"
)
apt-get "${apt_options[@]}" update -qq
# The server, the extension, and the libraries whose Debian 12 versions are too old (the C and
# C++ runtimes, ICU, OpenSSL) or have another name (LDAP).
(cd "$dir/debs" && apt-get "${apt_options[@]}" download -qq \
    postgresql-17 postgresql-17-timescaledb \
    libc6 libstdc++6 libgcc-s1 libicu76 libssl3t64 libldap2)
root="$dir/root"
mkdir -p "$root"
for deb in "$dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$root"
done
bin="$root/usr/lib/postgresql/17/bin"
mkdir -p "$bin/.real"
for program in postgres initdb pg_ctl; do
    if [ ! -e "$bin/.real/$program" ]; then
        mv "$bin/$program" "$bin/.real/$program"
    fi
    # --argv0 keeps the script's path as the program's own: PostgreSQL finds its share and
    # library directories relative to it, and initdb finds `postgres` next to it.
    cat > "$bin/$program" <<EOF
#!/bin/sh
root='$root'
extra=''
if [ '$program' = postgres ]; then
    case " \$* " in *" -p "*) extra='-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off';; esac
fi
exec "\$root/usr/lib64/ld-linux-x86-64.so.2" \\
    --library-path "\$root/lib/x86_64-linux-gnu:\$root/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \\
    --argv0 "\$0" "\$root/usr/lib/postgresql/17/bin/.real/$program" "\$@" \$extra
EOF
    chmod 755 "$bin/$program"
done
# The server runs as an unprivileged user: it must be able to read the tree.
chmod -R a+rX "$root"
"$bin/postgres" -V
echo "PG_BIN_DIR=$bin"
