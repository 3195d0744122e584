"""Readiness: can this process serve requests right now? Each part named, so a 503 says what to fix."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine, text

from imaging_sync.db import migrate
from storage.registry import BucketRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class Readiness:
    """database reachable; schema at the revision the code expects; every registry bucket signable."""

    def __init__(self, engine: Engine, registry: BucketRegistry) -> None:
        self.engine = engine
        self.registry = registry
        self.expected_revision = migrate.head_revision()  # read once: the code does not change while running

    def checks(self) -> list[Check]:
        database = self._database()
        results = [database]
        if database.ok:
            results.append(self._migrations())
        else:
            results.append(Check("migrations", False, "not checked: the database is unreachable"))
        results.append(self._storage())
        return results

    def _database(self) -> Check:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return Check("database", False, f"unreachable ({type(exc).__name__})")
        return Check("database", True, "reachable")

    def _migrations(self) -> Check:
        try:
            current = migrate.current_revision(self.engine)
        except Exception as exc:
            return Check("migrations", False, f"cannot read the schema revision ({type(exc).__name__})")
        if current != self.expected_revision:
            return Check("migrations", False, f"schema at {current or 'nothing'}, code expects {self.expected_revision}: run `imaging-sync db upgrade`")
        return Check("migrations", True, f"at {current}")

    def _storage(self) -> Check:
        """Each bucket's endpoint resolves and its credentials are there (no request to S3 for static keys)."""
        problems = []
        for bucket in sorted(self.registry.names):
            try:
                self.registry.endpoint(bucket)
                self.registry.credentials(bucket)
            except Exception as exc:
                problems.append(f"{bucket}: {type(exc).__name__}")
        if problems:
            # Bucket names are deployment internals: in the log for the operator, not in an unauthenticated body.
            log.warning("storage not ready: %s", "; ".join(problems))
            return Check("storage", False, f"{len(problems)} of {len(self.registry.names)} bucket(s) cannot be signed for (names in the server log)")
        return Check("storage", True, f"{len(self.registry.names)} bucket(s) in the registry")
