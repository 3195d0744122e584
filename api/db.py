"""One database connection per request, shared by the key check, the handler and the audit entry.

Profiling the API under load showed each pool checkout costing a ping and
each return a ROLLBACK: three per request (key, handler, audit) were a
third of a search's time. The connection is now taken once, on first use,
and returned with the audit entry (:func:`release`): by the handler's own
thread when it succeeded (:func:`api.auditing.recorded_in_thread`), else by
the audit middleware, which always runs last. No transaction is left open
across the parts, nor while S3 answers (:func:`end_reads`; on PostgreSQL
there is none to end, see autocommit below).

Holding a connection across thread hops needs one more rule. Handlers run in
the event loop's default executor (Litestar; min(32, cores + 4) threads), the
connection is taken in one hop and used in the next ones. When more requests
were in flight in a worker than the pool has connections, the executor's
threads all blocked waiting for a connection while the requests holding the
connections waited for a thread: the worker stood still until the pool's
30 s timeout (found by the latency benchmark: 30-90 s stalls, 6 requests
failed, the executor's size). So a request takes one of
``connection_limit(database)`` slots, waiting in the event loop (no thread
held), before its first connection, and gives it back after its last (the
audit middleware, :class:`api.auditing.AuditMiddleware`): a checkout then
never waits, and a thread never blocks on the pool.

On PostgreSQL the request's connection is in autocommit. Its reads are
single statements under READ COMMITTED, where a transaction around them
would give no steadier view (each statement takes its own snapshot anyway),
and its writes are single statements too (the key's ``last_used_at``, the
audit entry), each atomic on its own. A search then costs two round trips
(the query, the audit INSERT) instead of five (with BEGIN, COMMIT and the
pool's ping): the latency benchmark's CPU per request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.types import Scope
from sqlalchemy import Connection, Engine

_KEY = "db_connection"

# A handler's parameter for the request's connection (the ``conn`` dependency). To Litestar it is
# Any, so that its check of dependency values accepts the stand-in of :func:`provide_connection`.
if TYPE_CHECKING:
    RequestConnection = Connection
else:
    RequestConnection = NamedDependency[Any]

log = logging.getLogger("api.db")


def open_pool(engine: Engine, count: int) -> None:
    """Open ``count`` pooled connections before the first request (each server worker, at start).

    Opened lazily, a new worker's first requests each waited for a new
    PostgreSQL backend (a fork and cold caches): the latency benchmark's first
    second after a start. Best effort: a database that is down now must not
    stop the worker (``/ready`` reports it).
    """
    held = []
    try:
        for _ in range(count):
            held.append(engine.connect())
    except Exception as error:  # any failure only means "lazily, later"
        log.warning("could not open the connection pool at start (%s); connections open on first use", type(error).__name__)
    finally:
        for conn in held:
            conn.close()


def scope_connection(scope: Scope) -> Connection:
    """This request's connection (checked out on first use; blocking: call from a worker thread)."""
    state = scope["state"]
    conn: Connection | None = state.get(_KEY)
    if conn is None or conn.closed:
        engine: Engine = scope["litestar_app"].state["services"].engine
        conn = engine.connect()
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")  # reset when the pool takes it back
        state[_KEY] = conn
    return conn


def provide_connection(request: ASGIConnection[Any, Any, Any, Any], services: NamedDependency[Any]) -> Connection:
    """Litestar dependency ``conn`` (resolved in the event loop): the request's connection, taken on first use.

    Litestar resolves a dependency in a thread hop of its own, before the
    handler's: taking the connection there cost a hop per request (about a
    tenth of a search's CPU on two cores). The handler gets a stand-in that
    checks the connection out the first time it is used, in the handler's own
    worker thread.

    It depends on ``services`` (whose engine it is) so that Litestar resolves
    the two one after the other: dependencies of one level are resolved
    concurrently, in an anyio task group of their own, which was a tenth of a
    frame request's event-loop time (py-spy) for two dictionary lookups.
    """
    # Typed Any: the value is not used, and importing api.services here would close a loop (it imports the
    # security and audit modules, which import this one).
    del services  # the engine is looked up where the connection is taken (scope_connection), in the handler's thread
    return _LazyConnection(request.scope)  # type: ignore[return-value]  # a Connection to every use the handlers make


class _LazyConnection:
    """Stands in for the request's :class:`Connection`; checks it out (:func:`scope_connection`) on first use."""

    __slots__ = ("request_scope",)

    def __init__(self, scope: Scope) -> None:
        self.request_scope = scope  # for the audit entry written in the handler's thread (api.auditing)

    def __getattr__(self, name: str) -> Any:
        return getattr(scope_connection(self.request_scope), name)


def end_reads(conn: Connection) -> None:
    """Finish the handler's read transaction (nothing to keep)."""
    if conn.in_transaction():
        conn.rollback()


@contextmanager
def write_transaction(conn: Connection) -> Iterator[Connection]:
    """Writes that are committed when the block ends (the key check's touch, the audit entry).

    PostgreSQL: the request's connection is in autocommit (see above), so each
    statement commits as it runs; the callers write one statement each.
    SQLite: a transaction that takes the write lock up front (BEGIN IMMEDIATE),
    since a reader turning writer fails at once when another write committed
    meanwhile.
    """
    if conn.dialect.name == "postgresql":
        yield conn
        return
    end_reads(conn)
    conn.execution_options(sqlite_immediate=True)
    try:
        with conn.begin():
            yield conn
    finally:
        conn.execution_options(sqlite_immediate=False)


def release(scope: Scope) -> None:
    """Return the request's connection to the pool (rolling back whatever is open)."""
    conn: Connection | None = scope.get("state", {}).pop(_KEY, None)
    if conn is not None:
        conn.close()
