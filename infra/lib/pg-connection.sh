# shellcheck shell=bash
# Sourced by infra/backup.sh and infra/restore.sh: where the database is.
#
# Either a connection URL in $1's variable (BACKUP_DATABASE_URL, RESTORE_DATABASE_URL,
# or DATABASE_URL), or libpq's own PGHOST / PGPORT / PGUSER / PGPASSWORD /
# PGDATABASE (and PGPASSFILE, PGSSLMODE, …) as they are. A URL is split into
# those PG* variables, so a password never appears on a command line (where
# `ps` shows it to every user). SQLAlchemy's spelling (postgresql+psycopg://)
# is accepted: it is the same URL as imaging-sync's database.url.

_pg_urldecode() {
  local encoded="${1//\\/\\\\}"   # a literal backslash stays one
  printf '%b' "${encoded//%/\\x}"
}

# pg_connection_from_url URL: export PG* from a postgres:// or postgresql[+driver]:// URL.
pg_connection_from_url() {
  local url="$1" rest userinfo hostport path query pair key value
  if [[ ! "$url" =~ ^postgres(ql)?(\+[A-Za-z0-9_]+)?:// ]]; then
    echo "error: not a PostgreSQL URL (want postgresql://user@host:port/dbname)" >&2
    return 2
  fi
  rest="${url#*://}"
  query=""
  if [[ "$rest" == *\?* ]]; then query="${rest#*\?}"; rest="${rest%%\?*}"; fi
  path=""
  if [[ "$rest" == */* ]]; then path="${rest#*/}"; rest="${rest%%/*}"; fi
  hostport="$rest"
  if [[ "$rest" == *@* ]]; then userinfo="${rest%@*}"; hostport="${rest##*@}"
    if [[ "$userinfo" == *:* ]]; then
      export PGPASSWORD; PGPASSWORD="$(_pg_urldecode "${userinfo#*:}")"
      userinfo="${userinfo%%:*}"
    fi
    [[ -n "$userinfo" ]] && { export PGUSER; PGUSER="$(_pg_urldecode "$userinfo")"; }
  fi
  if [[ "$hostport" =~ ^\[(.*)\](:([0-9]+))?$ ]]; then          # [::1]:5432
    export PGHOST="${BASH_REMATCH[1]}"; [[ -n "${BASH_REMATCH[3]}" ]] && export PGPORT="${BASH_REMATCH[3]}"
  elif [[ -n "$hostport" ]]; then
    if [[ "$hostport" == *:* ]]; then export PGPORT="${hostport##*:}"; hostport="${hostport%:*}"; fi
    [[ -n "$hostport" ]] && { export PGHOST; PGHOST="$(_pg_urldecode "$hostport")"; }
  fi
  [[ -n "$path" ]] && { export PGDATABASE; PGDATABASE="$(_pg_urldecode "$path")"; }
  local IFS='&'
  for pair in $query; do
    key="${pair%%=*}"; value="$(_pg_urldecode "${pair#*=}")"
    case "$key" in
      sslmode) export PGSSLMODE="$value" ;;
      sslrootcert) export PGSSLROOTCERT="$value" ;;
      connect_timeout) export PGCONNECT_TIMEOUT="$value" ;;
      application_name) export PGAPPNAME="$value" ;;
      host) export PGHOST="$value" ;;
      port) export PGPORT="$value" ;;
      user) export PGUSER="$value" ;;
      password) export PGPASSWORD="$value" ;;
      dbname) export PGDATABASE="$value" ;;
      *) echo "warning: URL parameter ${key} ignored" >&2 ;;
    esac
  done
}

# pg_connection_setup VAR...: the first set variable among VAR... is the URL; else PG* as given.
pg_connection_setup() {
  local name
  for name in "$@"; do
    if [[ -n "${!name:-}" ]]; then
      pg_connection_from_url "${!name}" || return
      PG_CONNECTION_SOURCE="\$${name}"
      break
    fi
  done
  : "${PG_CONNECTION_SOURCE:=PG* environment}"
  export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"
  if [[ -z "${PGDATABASE:-}" ]]; then
    echo "error: no database named: set PGDATABASE or give a URL ending in /dbname ($*)" >&2
    return 2
  fi
}

# What to print about the connection: never the password.
pg_connection_describe() {
  printf '%s@%s:%s/%s' "${PGUSER:-$(id -un)}" "${PGHOST:-local socket}" "${PGPORT:-5432}" "${PGDATABASE}"
}
