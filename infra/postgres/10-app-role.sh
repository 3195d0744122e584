#!/usr/bin/env bash
# PostgreSQL first-start set-up (mounted into /docker-entrypoint-initdb.d; runs only
# when the data volume is empty): the service's two roles and its database.
#
# - APP_DB_USER (imaging_sync) owns the database and, once `imaging-sync db upgrade`
#   has run as it (the compose service "migrate"), every table. An owner can do
#   anything to its tables whatever their triggers say: ALTER TABLE audit_log DISABLE
#   TRIGGER, DROP TRIGGER, ALTER COLUMN … USING (rewrites every row, no trigger
#   fires), replace the trigger function, rename the table and put another in its
#   place. So only the migration connects as it.
# - APP_RUNTIME_USER (imaging_sync_app) is what the API, the DICOM node, the worker
#   and beat connect as (database.runtime_role): it owns nothing, and `db upgrade`
#   grants it only what the services use (imaging_sync/db/grants.py), on the audit
#   tables INSERT and SELECT. It is made here, by the superuser, so that the owner
#   needs no CREATEROLE (before PostgreSQL 16 a role that may create roles can make
#   itself a member of any other).
# Neither is a superuser. Needs IMAGING_SYNC_DB_PASSWORD (the owner's) and
# IMAGING_SYNC_DB_RUNTIME_PASSWORD (the services'); APP_DB_USER / APP_DB_NAME default to
# imaging_sync, APP_RUNTIME_USER to imaging_sync_app.
set -euo pipefail

: "${IMAGING_SYNC_DB_PASSWORD:?IMAGING_SYNC_DB_PASSWORD is not set (see .env.example)}"
: "${IMAGING_SYNC_DB_RUNTIME_PASSWORD:?IMAGING_SYNC_DB_RUNTIME_PASSWORD is not set (see .env.example)}"
APP_DB_USER="${APP_DB_USER:-imaging_sync}"
APP_DB_NAME="${APP_DB_NAME:-imaging_sync}"
APP_RUNTIME_USER="${APP_RUNTIME_USER:-imaging_sync_app}"
if [ "${APP_RUNTIME_USER}" = "${APP_DB_USER}" ]; then
  echo "postgres init: APP_RUNTIME_USER must differ from APP_DB_USER (the owner)" >&2
  exit 1
fi

# Values go in as psql variables (:'x' quotes them), never spliced into SQL text.
psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
  --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v app_user="${APP_DB_USER}" -v app_db="${APP_DB_NAME}" -v app_password="${IMAGING_SYNC_DB_PASSWORD}" \
  -v runtime_user="${APP_RUNTIME_USER}" -v runtime_password="${IMAGING_SYNC_DB_RUNTIME_PASSWORD}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'runtime_user', :'runtime_password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'runtime_user') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'app_db', :'app_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'app_db') \gexec
SQL
echo "postgres init: role ${APP_DB_USER} owns database ${APP_DB_NAME}; the services connect as ${APP_RUNTIME_USER}"
