#!/usr/bin/env bash
# Back up the imaging-sync PostgreSQL database: pg_dump in custom format, checked and checksummed,
# then old dumps pruned.
#
#   infra/backup.sh [--dir DIR] [--keep-days N] [--keep N] [--prefix NAME]
#
# Where the database is: BACKUP_DATABASE_URL or DATABASE_URL (postgresql://user@host:port/db;
# postgresql+psycopg:// as in imaging-sync's database.url works too), else libpq's PGHOST,
# PGPORT, PGUSER, PGDATABASE and PGPASSWORD / PGPASSFILE. Put the password in PGPASSWORD or
# ~/.pgpass, not in a URL on a command line.
#
# What it writes: DIR/PREFIX_DBNAME_YYYYMMDDTHHMMSSZ.dump (+ .sha256). The dump is written
# under a .partial name and renamed only once pg_dump succeeded and pg_restore can read
# its table of contents, so a file with the final name is always a complete dump.
#
# Retention, after a successful dump, among this database's dumps in DIR only:
# older than --keep-days (default BACKUP_KEEP_DAYS or 14; 0 = no age limit) are deleted,
# then all but the newest --keep (default BACKUP_KEEP_COUNT or 30; 0 = no count limit).
# The dump just made is never deleted.
#
# Exit codes: 0 done; 1 the dump failed (nothing pruned); 2 bad usage or connection
# settings; 3 another backup of the same database is running in DIR.
set -euo pipefail
umask 077   # dumps hold patient data: readable by their owner only

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=infra/lib/pg-connection.sh
source "${here}/lib/pg-connection.sh"

usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

dir="${BACKUP_DIR:-./backups}"
keep_days="${BACKUP_KEEP_DAYS:-14}"
keep_count="${BACKUP_KEEP_COUNT:-30}"
prefix="${BACKUP_PREFIX:-imaging-sync}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="${2:?--dir needs a directory}"; shift 2 ;;
    --keep-days) keep_days="${2:?--keep-days needs a number}"; shift 2 ;;
    --keep) keep_count="${2:?--keep needs a number}"; shift 2 ;;
    --prefix) prefix="${2:?--prefix needs a name}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "backup: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for value in "$keep_days" "$keep_count"; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "backup: --keep-days and --keep take whole numbers, got '${value}'" >&2; exit 2; }
done
[[ "$prefix" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "backup: --prefix may hold letters, digits, '.', '_' and '-' only" >&2; exit 2; }

pg_connection_setup BACKUP_DATABASE_URL DATABASE_URL || exit 2
target="$(pg_connection_describe)"
for tool in pg_dump pg_restore psql; do
  command -v "$tool" >/dev/null || { echo "backup: ${tool} not found (install the PostgreSQL client, same major version as the server or newer)" >&2; exit 2; }
done

if ! server="$(psql -X -A -t -v ON_ERROR_STOP=1 -c 'SHOW server_version' 2>&1)"; then
  echo "backup: cannot connect to ${target} (from ${PG_CONNECTION_SOURCE}): ${server}" >&2
  exit 2
fi
mkdir -p "$dir"
safe_db="$(printf '%s' "$PGDATABASE" | tr -c 'A-Za-z0-9._-' '_')"

exec 9>"${dir}/.${prefix}_${safe_db}.lock"
if command -v flock >/dev/null && ! flock -n 9; then
  echo "backup: another backup of ${PGDATABASE} is writing to ${dir}; not starting a second one" >&2
  exit 3
fi

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
file="${dir}/${prefix}_${safe_db}_${stamp}.dump"
partial="${file}.partial"
trap 'rm -f "$partial"' EXIT
echo "backup: dumping ${target} (server ${server%% *}, pg_dump $(pg_dump --version | awk '{print $3}')) to ${file}"
started=$SECONDS
# -w: never prompt for a password (cron has no terminal); --lock-wait-timeout: do not queue
# behind a long DDL lock for ever.
if ! pg_dump --format=custom --compress=6 --no-password --lock-wait-timeout=120s --file="$partial"; then
  echo "backup: pg_dump failed; no dump written, nothing pruned" >&2
  exit 1
fi
if ! toc="$(pg_restore --list "$partial")"; then
  echo "backup: the dump cannot be read back (pg_restore --list failed); nothing pruned" >&2
  exit 1
fi
mv "$partial" "$file"
trap - EXIT
(cd "$dir" && sha256sum "$(basename "$file")" > "$(basename "$file").sha256")
tables="$(grep -c ' TABLE DATA ' <<<"$toc" || true)"
size="$(du -h "$file" | cut -f1)"
echo "backup: wrote ${file} (${size}, ${tables} tables' data, $((SECONDS - started))s); checksum in $(basename "$file").sha256"

# -- retention: only this database's dumps, by the UTC time in their names ----------------
mapfile -t dumps < <(find "$dir" -maxdepth 1 -type f -name "${prefix}_${safe_db}_*.dump" -printf '%f\n' \
                     | grep -E "^${prefix//./\\.}_${safe_db//./\\.}_[0-9]{8}T[0-9]{6}Z\.dump$" | sort)
newest="$(basename "$file")"
delete=()
if [[ "$keep_days" -gt 0 ]]; then
  cutoff="$(date -u -d "-${keep_days} days" +%Y%m%dT%H%M%SZ)"
  for name in "${dumps[@]}"; do
    when="${name: -21:16}"
    if [[ "$name" != "$newest" && "$when" < "$cutoff" ]]; then delete+=("$name"); fi
  done
fi
if [[ "$keep_count" -gt 0 && "${#dumps[@]}" -gt "$keep_count" ]]; then
  for name in "${dumps[@]:0:${#dumps[@]}-keep_count}"; do
    [[ "$name" != "$newest" ]] && delete+=("$name")
  done
fi
if [[ "${#delete[@]}" -eq 0 ]]; then
  echo "backup: retention (keep ${keep_days} days, at most ${keep_count} dumps; 0 = no limit): nothing to delete, ${#dumps[@]} dumps kept"
else
  mapfile -t delete < <(printf '%s\n' "${delete[@]}" | sort -u)
  for name in "${delete[@]}"; do
    rm -f "${dir}/${name}" "${dir}/${name}.sha256"
    echo "backup: retention: deleted ${name}"
  done
  echo "backup: retention (keep ${keep_days} days, at most ${keep_count} dumps): deleted ${#delete[@]}, kept $(( ${#dumps[@]} - ${#delete[@]} ))"
fi
