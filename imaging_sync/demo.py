"""The README's first command: a demo partner, a sync, a change, a re-sync, a report.

Everything runs on this machine with no other service: the partner simulator
listens on 127.0.0.1, the index is a SQLite file, nothing is copied but the
index rows (file locations are recorded as bucket and key, never fetched).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

import msgspec
from pathlib import Path
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from imaging_sync.bootstrap import bootstrap
from imaging_sync.config import LoggingConfig
from imaging_sync.db import migrate
from imaging_sync.db.models import EntityLink, Instance, InstanceLocation, Series, Study, Subject
from imaging_sync.testing.datagen import DatasetSpec
from imaging_sync.testing.factories import settings_for, simulator_partner
from imaging_sync.testing.simulator import PartnerSimulator, SimulatorConfig

DEMO_KEY_ENV = "IMAGING_SYNC_DEMO_PARTNER_KEY"


def run_demo(*, studies: int, database_url: str, echo: Callable[[str], None]) -> None:
    key = os.environ.setdefault(DEMO_KEY_ENV, secrets.token_urlsafe(24))
    _fresh_sqlite(database_url, echo)
    spec = DatasetSpec(partner="demo", studies=studies)
    with PartnerSimulator(spec, SimulatorConfig(api_key=key)) as simulator:
        echo(f"demo partner (simulator) listening on {simulator.base_url} with {studies} studies")
        partner = simulator_partner("demo", simulator.base_url, api_key_env=DEMO_KEY_ENV, page_size=100)
        # Warnings only: the demo narrates the runs itself.
        settings = msgspec.structs.replace(settings_for(database_url, partner), source="demo", logging=LoggingConfig(level="WARNING"))
        core = bootstrap(settings)
        try:
            migrate.upgrade(core.engine)
            echo(f"index database: {database_url} (schema {migrate.current_revision(core.engine)})")

            echo("1. first sync (everything is new):")
            echo("   " + core.runner.sync("demo", trigger="demo").summary())

            echo("2. the partner changes one study and deletes another; incremental sync from the bookmark:")
            first, second = spec.study_id(0), spec.study_id(1)
            simulator.dataset.update_study(first, lambda item: item.update(description="DEMO UPDATED"))
            simulator.dataset.delete_study(second)
            echo("   " + core.runner.sync("demo", trigger="demo").summary())

            echo("3. nothing changed; sync again (writes nothing):")
            echo("   " + core.runner.sync("demo", trigger="demo").summary())

            with core.engine.connect() as conn:
                count = lambda model: conn.execute(select(func.count()).select_from(model).where(model.deleted_at.is_(None))).scalar_one()  # noqa: E731
                totals = {name: count(model) for name, model in [("subjects", Subject), ("studies", Study), ("series", Series), ("instances", Instance)]}
                locations = conn.execute(select(func.count()).select_from(InstanceLocation)).scalar_one()
                links = conn.execute(select(func.count()).select_from(EntityLink)).scalar_one()
            echo(
                "index now holds " + ", ".join(f"{v} {k}" for k, v in totals.items())
                + f"; {locations} file locations (bucket + key) and {links} provenance links."
            )
            echo(f"look around: IMAGING_SYNC__DATABASE__URL={database_url} python3 -m imaging_sync runs list  (or: rejected list, --help)")
        finally:
            core.close()


def _fresh_sqlite(database_url: str, echo: Callable[[str], None]) -> None:
    """The demo tells a story from an empty index: start its SQLite file anew."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    for suffix in ("", "-wal", "-shm"):
        path = Path(url.database + suffix)
        if path.exists():
            path.unlink()
    echo(f"(demo index {url.database} recreated)")
