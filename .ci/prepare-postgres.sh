#!/usr/bin/env bash
# Create the application role and database on the local PostgreSQL (trust auth as user postgres).
set -euo pipefail
PSQL=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtA)
"${PSQL[@]}" -d postgres <<'SQL' >/dev/null
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rapport') THEN
    CREATE ROLE rapport LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS;
  END IF;
END $$;
SQL
if [ "$("${PSQL[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'rapport'")" != "1" ]; then
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE rapport OWNER rapport" >/dev/null
fi
