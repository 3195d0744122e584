#!/usr/bin/env bash
# PostgreSQL first-start set-up (mounted into /docker-entrypoint-initdb.d; runs only
# when the data volume is empty): the service's own role and database.
#
# imaging-sync connects as an ordinary role that owns its database, not as the
# superuser: only a superuser may switch the audit log's append-only triggers
# off (session_replication_role), so the service itself cannot.
# Needs IMAGING_SYNC_DB_PASSWORD; APP_DB_USER / APP_DB_NAME default to imaging_sync.
set -euo pipefail

: "${IMAGING_SYNC_DB_PASSWORD:?IMAGING_SYNC_DB_PASSWORD is not set (see .env.example)}"
APP_DB_USER="${APP_DB_USER:-imaging_sync}"
APP_DB_NAME="${APP_DB_NAME:-imaging_sync}"

# Values go in as psql variables (:'x' quotes them), never spliced into SQL text.
psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
  --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v app_user="${APP_DB_USER}" -v app_db="${APP_DB_NAME}" -v app_password="${IMAGING_SYNC_DB_PASSWORD}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'app_db', :'app_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'app_db') \gexec
SQL
echo "postgres init: role ${APP_DB_USER} owns database ${APP_DB_NAME}"
