"""The services' own PostgreSQL role: created or checked, granted exactly :mod:`imaging_sync.db.grants`, and inspected.

``imaging-sync db upgrade`` connects as the owning role (``database.url``),
migrates, then calls :func:`prepare_runtime_role` in the same run: the role
named by ``database.runtime_role`` is created when missing (with ``LOGIN`` and
the password of ``runtime_password_env``/``_file``, sent to the server
already hashed, as SCRAM, so the statement never carries it) or checked when
it exists, and every relation of the schema gets its privileges anew. The
grants are idempotent and re-applied on every upgrade, so tables and
partitions added by later migrations are covered the moment they exist.

``imaging-sync doctor`` calls :func:`audit_reach` on the services' own
connection: the check that the arrangement holds in the running deployment,
not only in the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text

from imaging_sync.config import DatabaseConfig, runtime_password
from imaging_sync.db import grants
from imaging_sync.errors import DatabaseError


@dataclass(frozen=True)
class RoleReport:
    """What :func:`prepare_runtime_role` did, for ``db upgrade`` to print."""

    role: str
    created: bool
    granted: dict[str, list[str]] = field(default_factory=dict)  # relation -> privileges granted
    denied: list[str] = field(default_factory=list)  # relations of the schema with no grant at all (undeclared, partitions)

    def summary(self) -> str:
        how = "created" if self.created else "checked"
        return (f"runtime role {self.role} {how}; grants applied on {len(self.granted)} relations"
                + (f", none on {', '.join(sorted(self.denied))}" if self.denied else ""))


def prepare_runtime_role(owner: Engine, config: DatabaseConfig, environ: Mapping[str, str] | None = None) -> RoleReport | None:
    """Create or check ``database.runtime_role`` and (re)apply its grants, in one transaction; None when there is none to prepare.

    Refuses (DatabaseError, naming the fix) a runtime role that is the
    connecting owner, a member of a table owner's role, a superuser, or may
    create roles (before PostgreSQL 16 such a role can make itself a member of
    any role, the owner's included), or that cannot log in.
    """
    role = config.runtime_role
    if not role or owner.dialect.name != "postgresql":
        return None
    password = runtime_password(config, environ)
    with owner.begin() as conn:
        me = conn.scalar(text("SELECT current_user"))
        if me == role:
            raise DatabaseError(f"database.runtime_role: {role} is the role of database.url itself, which owns the tables: name another role")
        found = conn.execute(text("SELECT rolsuper, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = :role"), {"role": role}).first()
        created = found is None
        if found is None:
            _create_role(conn, role, password.reveal() if password is not None else None)
        else:
            _check_existing(conn, role, super_=bool(found[0]), createrole=bool(found[1]), login=bool(found[2]))
        granted, denied = _apply_grants(conn, role)
    return RoleReport(role=role, created=created, granted=granted, denied=denied)


def _create_role(conn: Connection, role: str, password: str | None) -> None:
    may = conn.execute(text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")).scalar()
    if not may:
        raise DatabaseError(
            f"database.runtime_role: role {role} does not exist, and the owning role may not create roles; create it once as a superuser: "
            f"CREATE ROLE {role} LOGIN PASSWORD '…' (the compose stack's infra/postgres/10-app-role.sh does), then run `imaging-sync db upgrade` again")
    statement = "CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
    params: dict[str, str] = {"role": role}
    if password is not None:
        # libpq hashes it (SCRAM-SHA-256, or what password_encryption says): the statement, and any log of it, never carries the password.
        raw = conn.connection.dbapi_connection
        params["verifier"] = raw.pgconn.encrypt_password(password.encode(), role.encode()).decode()  # type: ignore[union-attr]
        created = conn.scalar(text(f"SELECT format('{statement} PASSWORD %L', CAST(:role AS text), CAST(:verifier AS text))"), params)
    else:
        created = conn.scalar(text(f"SELECT format('{statement}', CAST(:role AS text))"), params)
    conn.exec_driver_sql(str(created))


def _check_existing(conn: Connection, role: str, *, super_: bool, createrole: bool, login: bool) -> None:
    problems = []
    if super_:
        problems.append("is a superuser (ALTER ROLE … NOSUPERUSER)")
    if createrole:
        problems.append("may create roles, and so grant itself the owner's (ALTER ROLE … NOCREATEROLE)")
    if not login:
        problems.append("cannot log in, and the services connect as it (ALTER ROLE … LOGIN)")
    owners = conn.execute(text(
        "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.relnamespace = to_regnamespace(current_schema()) "
        "AND c.relname = ANY(:tables) AND pg_has_role(:role, c.relowner, 'MEMBER')"), {"role": role, "tables": list(grants.AUDIT_TABLES)}).scalars().all()
    for owner in owners:
        problems.append(f"is a member of {owner}, the audit log's owner (REVOKE {owner} FROM {role})")
    if problems:
        raise DatabaseError(f"database.runtime_role: role {role} " + "; ".join(problems) + ": the services would be able to rewrite the audit log")


def _apply_grants(conn: Connection, role: str) -> tuple[dict[str, list[str]], list[str]]:
    """Every relation of the schema this role owns: all privileges revoked from the runtime role and PUBLIC, then the declared ones granted."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    who = quote(role)
    relations = conn.execute(text(
        "SELECT c.relname, c.relkind = 'S' AS is_sequence, c.relispartition FROM pg_class c "
        "WHERE c.relnamespace = to_regnamespace(current_schema()) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') "
        "AND pg_has_role(current_user, c.relowner, 'USAGE') ORDER BY c.relname")).all()
    granted: dict[str, list[str]] = {}
    denied: list[str] = []
    for name, is_sequence, is_partition in relations:
        kind = "SEQUENCE" if is_sequence else "TABLE"
        declared = None if is_partition else (grants.SEQUENCES if is_sequence else grants.TABLES).get(name)
        conn.exec_driver_sql(f"REVOKE ALL ON {kind} {quote(name)} FROM {who}, PUBLIC")
        if declared:
            privileges = sorted(declared)
            conn.exec_driver_sql(f"GRANT {', '.join(privileges)} ON {kind} {quote(name)} TO {who}")
            granted[name] = privileges
        elif not is_partition:
            denied.append(name)
    schema = conn.scalar(text("SELECT current_schema()"))
    if conn.scalar(text("SELECT pg_has_role(current_user, nspowner, 'USAGE') FROM pg_namespace WHERE nspname = current_schema()")):
        conn.exec_driver_sql(f"REVOKE CREATE ON SCHEMA {quote(str(schema))} FROM {who}")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {quote(str(schema))} TO {who}")
    if conn.scalar(text("SELECT pg_has_role(current_user, datdba, 'USAGE') FROM pg_database WHERE datname = current_database()")):
        database = quote(str(conn.scalar(text("SELECT current_database()"))))
        conn.exec_driver_sql(f"GRANT {', '.join(sorted(grants.DATABASE))} ON DATABASE {database} TO {who}")
    return granted, denied


def check_login(services: Engine) -> str:
    """The role the services' engine really logs in as (``db upgrade`` proves the runtime role's secret works before it says done)."""
    try:
        with services.connect() as conn:
            return str(conn.scalar(text("SELECT current_user")))
    except Exception as exc:
        orig = getattr(exc, "orig", None) or exc
        first = next((line.strip() for line in str(orig).splitlines() if line.strip()), type(orig).__name__)
        raise DatabaseError(f"database.runtime_role: the services cannot log in as {services.url.username}: {first} "
                            "(check runtime_password_env/runtime_password_file, or set the role's password: ALTER ROLE … PASSWORD)") from None


# -- what the services' own connection could do to the audit log ------------------------------------


@dataclass(frozen=True)
class Reach:
    """The audit tables as one connection's role sees them: what it could do beyond appending, and what it lacks."""

    role: str
    checked: list[str]
    excess: list[str]  # each a sentence: "owns audit_log (owner imaging_sync)", "could UPDATE, DELETE audit_log", …
    missing: list[str]  # "cannot INSERT into audit_seal"


def audit_reach(conn: Connection) -> Reach:
    """Whether this connection could change the audit log rather than only append to it and read it.

    Ownership, or membership in the owner's role, is the power to ALTER, DROP,
    disable or replace the triggers and rewrite every row; a superuser has it
    over everything; a role that may create roles could (before PostgreSQL
    16) grant itself the owner's. ``has_table_privilege`` answers for grants
    held directly, through a role, or through PUBLIC.
    """
    role, superuser, createrole = conn.execute(text(
        "SELECT current_user, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")).one()
    excess: list[str] = []
    missing: list[str] = []
    checked: list[str] = []
    if superuser:
        excess.append("is a superuser")
    if createrole:
        excess.append("may create roles (CREATEROLE), and so grant itself the owner's")
    beyond = ", ".join(f"has_table_privilege(c.oid, '{p}')" for p in grants.BEYOND_APPEND)
    for table in grants.AUDIT_TABLES:
        row = conn.execute(text(
            f"SELECT pg_get_userbyid(c.relowner), pg_has_role(current_user, c.relowner, 'MEMBER'), "
            f"has_table_privilege(c.oid, 'INSERT'), has_table_privilege(c.oid, 'SELECT'), {beyond} "
            "FROM pg_class c WHERE c.oid = to_regclass(:table)"), {"table": table}).first()
        if row is None:
            continue  # not created yet at this schema revision: the migrations line says so
        checked.append(table)
        owner, member, can_insert, can_select, *more = row
        if owner == role:
            excess.append(f"owns {table}")
        elif member:
            excess.append(f"is a member of {owner}, owner of {table}")
        could = [p for p, allowed in zip(grants.BEYOND_APPEND, more, strict=True) if allowed]
        if could and not (superuser or member):
            excess.append(f"could {', '.join(could)} {table}")
        missing += [f"cannot {p} {table}" for p, allowed in (("INSERT into", can_insert), ("SELECT from", can_select)) if not allowed]
    return Reach(role=str(role), checked=checked, excess=excess, missing=missing)
