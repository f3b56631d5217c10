#!/bin/sh
# Create the database on the first start (an empty volume), then run PostgreSQL as its user.
set -eu
bin=$(echo /usr/lib/postgresql/*/bin)
install -d -o postgres -g postgres -m 700 "$PGDATA"
install -d -o postgres -g postgres /run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password=$(mktemp)
    printf '%s' "$POSTGRES_PASSWORD" >"$password"
    chown postgres "$password"
    setpriv --reuid=postgres --regid=postgres --init-groups "$bin/initdb" -D "$PGDATA" \
        -U "$POSTGRES_USER" --pwfile="$password" --auth=scram-sha-256 -E UTF8 >/dev/null
    rm "$password"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" |
        setpriv --reuid=postgres --regid=postgres --init-groups \
            "$bin/postgres" --single -D "$PGDATA" -j postgres >/dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
