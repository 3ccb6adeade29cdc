#!/usr/bin/env bash
# Start (idempotently) a throw-away PostgreSQL server on loopback for the test suite and
# print its SQLAlchemy URL. Installs Debian's postgresql when missing (as root).
# Usage: scripts/pg-test-server.sh start|stop|url
set -euo pipefail
PORT=${AUTOPIPE_PG_PORT:-55432}
DATA=${AUTOPIPE_PG_DIR:-/tmp/autopipe-pgtest-$PORT}
URL="postgresql+psycopg://autopipe@127.0.0.1:$PORT/autopipe_test"

bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_pg() {
    # PostgreSQL refuses to run as root: use the 'postgres' system user then.
    if [ "$(id -u)" = "0" ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
url) echo "$URL" ;;
stop)
    B=$(bin_dir); [ -n "$B" ] && [ -d "$DATA" ] && as_pg "$B/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true ;;
start)
    B=$(bin_dir)
    if [ -z "$B" ]; then
        if [ "$(id -u)" = "0" ]; then
            echo "pg-test-server: installing postgresql from Debian" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
            B=$(bin_dir)
        else
            echo "pg-test-server: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1
        fi
    fi
    if [ ! -f "$DATA/PG_VERSION" ]; then
        mkdir -p "$DATA"
        [ "$(id -u)" = "0" ] && chown postgres:postgres "$DATA"
        as_pg "$B/initdb" -D "$DATA" -U autopipe --auth=trust -E UTF8 >/dev/null
    fi
    if ! as_pg "$B/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_pg "$B/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c fsync=off -c max_connections=200" start >/dev/null
    fi
    if ! as_pg "$B/psql" -h 127.0.0.1 -p "$PORT" -U autopipe -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname='autopipe_test'" | grep -q 1; then
        as_pg "$B/createdb" -h 127.0.0.1 -p "$PORT" -U autopipe autopipe_test
    fi
    # Members of the role autopipe_password_users must give a password (scram): the tests make
    # such a member to show a password taken from PGPASSWORD or a pgpass file works (the
    # 'autopipe' role above is trusted on loopback and would prove nothing).
    as_pg "$B/psql" -h 127.0.0.1 -p "$PORT" -U autopipe -d postgres -qtAc "DO \$\$ BEGIN IF NOT EXISTS
        (SELECT 1 FROM pg_roles WHERE rolname = 'autopipe_password_users') THEN
        CREATE ROLE autopipe_password_users NOLOGIN; END IF; END \$\$" >/dev/null
    if ! grep -q "autopipe_password_users" "$DATA/pg_hba.conf"; then
        as_pg sed -i '1i host all +autopipe_password_users 127.0.0.1/32 scram-sha-256' "$DATA/pg_hba.conf"
        as_pg "$B/pg_ctl" -D "$DATA" reload >/dev/null
    fi
    echo "$URL" ;;
*) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
