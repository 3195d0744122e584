#!/usr/bin/env bash
# Restore an imaging-sync dump made by infra/backup.sh into a PostgreSQL database.
#
#   infra/restore.sh [--create] [--db-owner ROLE] [--force] [--no-owner] [--role ROLE] [--jobs N] DUMPFILE
#
# The target: RESTORE_DATABASE_URL or DATABASE_URL, else libpq's PG* variables (PGDATABASE is
# the database restored into). Stop everything that writes to it first (API, DICOM node,
# worker, beat, migrations).
#
#   --create         create the target database when it does not exist (connects to the
#                    "postgres" database for that); --db-owner ROLE makes ROLE its owner
#   --force          restore into a database that already has tables: objects in the dump
#                    are dropped and re-created (pg_restore --clean --if-exists, run through
#                    psql: see "partitions" below). Without it a non-empty database is
#                    refused, so a restore never lands on live data by mistake
#   --no-owner       objects belong to the restoring user instead of their original owners
#   --role ROLE      create the objects as ROLE (SET ROLE), e.g. the service's own role
#   --jobs N         parallel restore (faster for large dumps; not one transaction then)
#
# By default the restore is one transaction: it lands whole or not at all. The dump's
# checksum (.sha256 beside it) is verified first when present. Afterwards the tables are
# ANALYZEd (planner statistics are not in a dump) and the row counts are printed.
# Restore as a superuser or as the owner of every object (an extension's comment needs one).
#
# Partitions: pg_restore --clean drops each partition's inherited key before its parent table,
# which PostgreSQL refuses ("cannot drop inherited constraint"). So --force writes the restore as
# SQL (pg_restore -f), leaves out the drops of what the dump itself attaches to a partitioned
# parent (dropping the parent takes them along), and runs it with psql in one transaction.
# --force with --jobs is refused for that reason.
#
# Exit codes: 0 restored; 1 the restore failed (rolled back); 2 bad usage, unreadable dump
# or no connection; 3 refused: the target has tables and --force was not given.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=infra/lib/pg-connection.sh
source "${here}/lib/pg-connection.sh"

usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

create=0 force=0 jobs=1 db_owner="" role="" file=""
restore_opts=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --create) create=1; shift ;;
    --db-owner) db_owner="${2:?--db-owner needs a role}"; shift 2 ;;
    --force) force=1; shift ;;
    --no-owner) restore_opts+=(--no-owner); shift ;;
    --role) role="${2:?--role needs a role}"; restore_opts+=("--role=${role}"); shift 2 ;;
    --jobs) jobs="${2:?--jobs needs a number}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "restore: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [[ -z "$file" ]] || { echo "restore: one dump file only" >&2; exit 2; }; file="$1"; shift ;;
  esac
done
[[ -n "$file" ]] || { echo "restore: which dump? (restore.sh [options] DUMPFILE; see --help)" >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "restore: --jobs takes a positive whole number" >&2; exit 2; }
[[ -r "$file" ]] || { echo "restore: cannot read ${file}" >&2; exit 2; }

pg_connection_setup RESTORE_DATABASE_URL DATABASE_URL || exit 2
target="$(pg_connection_describe)"
for tool in pg_restore psql; do
  command -v "$tool" >/dev/null || { echo "restore: ${tool} not found (install the PostgreSQL client)" >&2; exit 2; }
done

# -- 1. the dump: intact and readable ------------------------------------------------
if [[ -f "${file}.sha256" ]]; then
  if ! (cd "$(dirname "$file")" && sha256sum --check --status "$(basename "$file").sha256"); then
    echo "restore: ${file} does not match its checksum (${file}.sha256): corrupt or altered; not restoring" >&2
    exit 2
  fi
  echo "restore: checksum of $(basename "$file") verified"
else
  echo "restore: no ${file}.sha256 beside the dump; checksum not verified"
fi
if ! toc="$(pg_restore --list "$file" 2>&1)"; then
  echo "restore: ${file} is not a readable pg_dump custom-format archive: ${toc}" >&2
  exit 2
fi
echo "restore: $(grep -c ' TABLE DATA ' <<<"$toc" || true) tables' data in $(basename "$file")"

# -- 2. the target: exists (or is created), and is empty unless --force ----------------
db="$PGDATABASE"
exists="$(PGDATABASE=postgres psql -X -A -t -v ON_ERROR_STOP=1 -v db="$db" 2>&1 <<'SQL'
SELECT count(*) FROM pg_database WHERE datname = :'db';
SQL
)" || { echo "restore: cannot connect to the server of ${target} (from ${PG_CONNECTION_SOURCE}): ${exists}" >&2; exit 2; }
if [[ "$exists" != "1" ]]; then
  if [[ "$create" -ne 1 ]]; then
    echo "restore: database ${db} does not exist; pass --create to create it" >&2
    exit 2
  fi
  owner_sql=""
  [[ -n "$db_owner" ]] && owner_sql=" OWNER :\"owner\""
  PGDATABASE=postgres psql -X -q -v ON_ERROR_STOP=1 -v db="$db" -v owner="$db_owner" <<SQL
CREATE DATABASE :"db"${owner_sql};
SQL
  echo "restore: created database ${db}${db_owner:+ owned by ${db_owner}}"
fi

tables="$(psql -X -A -t -v ON_ERROR_STOP=1 <<'SQL'
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%';
SQL
)"
if [[ "$tables" != "0" ]]; then
  if [[ "$force" -ne 1 ]]; then
    echo "restore: refusing: ${target} is not empty (${tables} tables, sequences or views). Restore into a new database (--create with another PGDATABASE), or pass --force to replace what the dump contains" >&2
    exit 3
  fi
  if [[ "$jobs" -gt 1 ]]; then
    echo "restore: --force cannot run with --jobs (the drops of a partitioned table's parts need one script); restore into an empty database for a parallel restore" >&2
    exit 2
  fi
  echo "restore: --force: ${target} has ${tables} relations; the dump's objects are dropped and re-created"
  restore_opts+=(--clean --if-exists)
fi

# The dropping restore as one SQL script without the drops PostgreSQL refuses on partitions.
restore_as_script() {
  local script status=0 opt
  local opts=()
  for opt in "${restore_opts[@]}"; do [[ "$opt" == --single-transaction ]] || opts+=("$opt"); done  # psql makes the one transaction
  script="$(mktemp)"
  pg_restore --no-password "${opts[@]}" -f - "$file" | awk '
    # First pass (the whole script in memory is fine: it is the schema plus COPY data, read once).
    { lines[NR] = $0 }
    /ATTACH PARTITION/ { for (i = 1; i <= NF; i++) if ($i == "PARTITION") { name = $(i + 1); sub(/[;]$/, "", name); attached[name] = 1 } }
    END {
      for (n = 1; n <= NR; n++) {
        line = lines[n]
        if (line ~ /^ALTER TABLE IF EXISTS ONLY [^ ]+ DROP CONSTRAINT IF EXISTS / || line ~ /^DROP INDEX IF EXISTS /) {
          split(line, words, " ")
          target = (line ~ /^DROP INDEX/) ? words[5] : words[6]
          sub(/;$/, "", target)
          if (target in attached) continue
        }
        print line
      }
    }' > "$script"
  psql -X -q -v ON_ERROR_STOP=1 --single-transaction -f "$script" >/dev/null || status=$?
  rm -f "$script"
  return "$status"
}

# -- 3. restore --------------------------------------------------------------------------
if [[ "$jobs" -gt 1 ]]; then
  restore_opts+=("--jobs=${jobs}")
  echo "restore: ${jobs} parallel jobs: not a single transaction; a failure can leave a partial restore"
else
  restore_opts+=(--single-transaction)
fi
echo "restore: restoring $(basename "$file") into ${target}"
started=$SECONDS
if [[ "$force" -eq 1 && "$tables" != "0" ]]; then
  restored() { restore_as_script; }
else
  restored() { pg_restore --no-password --exit-on-error "${restore_opts[@]}" --dbname="$db" "$file"; }
fi
if ! restored; then
  echo "restore: pg_restore failed$([[ "$jobs" -eq 1 ]] && echo '; the transaction was rolled back, the database is as before')" >&2
  exit 1
fi
psql -X -q -v ON_ERROR_STOP=1 -c 'ANALYZE' >/dev/null
echo "restore: restored in $((SECONDS - started))s and analyzed; rows per table:"
psql -X -A -t -F ' ' -v ON_ERROR_STOP=1 <<'SQL' | sed 's/^/restore:   /'
SELECT c.relname, (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public'
 ORDER BY c.relname;
SQL
revision="$(psql -X -A -t -c "SELECT CASE WHEN to_regclass('public.alembic_version') IS NULL THEN '(no alembic_version table)' ELSE (SELECT string_agg(version_num, ',') FROM alembic_version) END")"
echo "restore: schema revision ${revision}; check it with \`imaging-sync db current\` before starting the service"
