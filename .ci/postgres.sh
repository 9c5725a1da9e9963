#!/usr/bin/env bash
# Starts a local PostgreSQL (installing it from apt when missing) and prints the URL tests use
# as MOLECULE_TEST_DATABASE_URL. Safe to run repeatedly.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$ver main"; then
  pg_createcluster "$ver" main >&2
fi
pg_ctlcluster "$ver" main start >&2 2>/dev/null || true
for _ in $(seq 1 50); do
  if su postgres -c "pg_isready -q -h 127.0.0.1 -p 5432"; then break; fi
  sleep 0.2
done
su postgres -c "psql -q -h 127.0.0.1 -p 5432 -c \"ALTER USER postgres PASSWORD 'molecule'\"" >&2 2>/dev/null \
  || su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'molecule'\"" >&2
echo "postgres://postgres:molecule@127.0.0.1:5432/postgres"
