#!/usr/bin/env bash
# Run once by the postgres image on an empty data directory (docker-compose.yml mounts it into
# /docker-entrypoint-initdb.d). The application role is neither superuser nor BYPASSRLS, so row-level
# security applies to it; POSTGRES_USER stays the administrator.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v app_password="${RAPPORT_DB_PASSWORD:?RAPPORT_DB_PASSWORD must be set}" <<'SQL'
CREATE ROLE rapport LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD :'app_password';
CREATE DATABASE rapport OWNER rapport;
SQL
