"""What the handlers are given: the process's core objects, assembled once by the app factory."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from litestar.datastructures import State
from sqlalchemy import Engine

from imaging_sync.config import Settings
from imaging_sync.db.engine import connection_limit

if TYPE_CHECKING:
    from api.auditing import IpNetwork
    from api.files.services import FileUrls
    from api.health.readiness import Readiness
    from api.operations.launcher import SyncLauncher
    from api.security import PrincipalCache
    from storage.headers import HeaderCache


class Services:
    """A plain class on purpose: Litestar passes it to handlers as is, without inspecting its fields."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        files: FileUrls,
        launcher: SyncLauncher,
        readiness: Readiness,
        trusted_proxies: list[IpNetwork],
        principals: PrincipalCache,
        headers: HeaderCache,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.files = files
        self.launcher = launcher
        self.readiness = readiness
        self.trusted_proxies = trusted_proxies
        self.headers = headers  # DICOMweb's header cache (read once from the partners' objects)
        self.principals = principals
        # A request takes a slot before its first connection and gives it back after the last (api.db).
        self.connection_slots = asyncio.Semaphore(connection_limit(settings.database))


def provide_services(state: State) -> Services:
    """Litestar dependency ``services``: the one instance in the app state."""
    services: Services = state["services"]
    return services
