"""``GET /metrics`` (Prometheus text format, no key: it carries no patient data).

API request counts and latency come from Litestar's Prometheus middleware,
per process (with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` or scrape
each worker). Everything else — sync runs by status, items by outcome, run
durations, outbox backlog and age, DICOM operations and durations — is read
from the database at scrape time (imaging_sync.metrics), so any instance
reports the whole service.
"""

from __future__ import annotations

import threading
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController, PrometheusMiddleware
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from imaging_sync.metrics import DatabaseCollector

_collector: DatabaseCollector | None = None
_guard = threading.Lock()


class _RouteLabels(PrometheusMiddleware):
    """Litestar's middleware, labelling by route template without first building the request's URL.

    With ``group_path`` Litestar still parses the whole URL from the scope on
    every request and then throws its path away for the template: a quarter of
    the middleware's own time (outside the app it wraps) on a DICOMweb frame
    request (py-spy). The labels are the same.
    """

    def _get_default_labels(self, request: Request[Any, Any, Any]) -> dict[str, str | int | float]:
        scope = request.scope
        return {
            "method": scope["method"] if scope["type"] == ScopeType.HTTP else scope["type"],
            "path": scope["path_template"],
            "status_code": 200,
            "app_name": self._config.app_name,
        }


PROMETHEUS = PrometheusConfig(
    middleware_class=_RouteLabels,
    app_name="imaging_sync",
    prefix="imaging_sync_api",
    group_path=True,  # label by route template (/api/v1/studies/{study_id}), not by concrete path
    exclude=["/metrics", "/health", "/ready"],
    buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
)


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


def register_database_collector(engine: Engine) -> None:
    """Point the process's one database collector at ``engine`` (registered on first use)."""
    global _collector
    with _guard:
        if _collector is None:
            _collector = DatabaseCollector(engine)
            REGISTRY.register(_collector)
        _collector.engine = engine
