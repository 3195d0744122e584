#!/usr/bin/env python3
"""Container health check for every role of the imaging-sync image (``HEALTHCHECK`` in infra/Dockerfile).

    imaging-sync-healthcheck [ROLE] [--port N]

ROLE is ``api``, ``dicom``, ``worker``, ``simulator`` or ``none``; without it,
``IMAGING_SYNC_ROLE`` (default ``api``). Prints one line and exits 0 when the
process of that role answers, 1 when not. It checks the process itself, not
its dependencies (a database outage must not mark every container unhealthy
and hide where the fault is: ``imaging-sync doctor`` and ``/ready`` say that).

- api: ``GET /health`` on 127.0.0.1 (api.port);
- dicom: C-ECHO to dicom.ae_title on 127.0.0.1 (dicom.port); an association
  refused only because our calling AE is not allowlisted still proves the node answers;
- worker: a Celery ping to this container's worker node (celery@HOSTNAME);
- simulator: the demo partner's ``GET /v1/health`` with its key (SIM_API_KEY).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request

TIMEOUT = 5.0
HEALTH_CALLING_AET = "ISYNC_HEALTH"


def _settings():  # type: ignore[no-untyped-def]
    from imaging_sync.config import load_settings

    return load_settings()


def _http_ok(url: str, headers: dict[str, str] | None = None) -> tuple[bool, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status == 200, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except OSError as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def check_api(port: int | None) -> tuple[bool, str]:
    return _http_ok(f"http://127.0.0.1:{port or _settings().api.port}/health")


def check_dicom(port: int | None) -> tuple[bool, str]:
    from app.doctor import dicom_echo

    config = _settings().dicom
    # A calling AE of its own, so the node's association log lines of the probe are easy to tell apart.
    result = dicom_echo(config.ae_title, "127.0.0.1", port or config.port, calling_aet=HEALTH_CALLING_AET, timeout=TIMEOUT)
    return result.status == "OK", result.detail


def check_worker() -> tuple[bool, str]:
    from jobs.app import create_app

    node = os.environ.get("IMAGING_SYNC_WORKER_NODE") or f"celery@{socket.gethostname()}"
    app = create_app(_settings())
    try:
        replies = app.control.ping(destination=[node], timeout=TIMEOUT)
    finally:
        app.close()
    answered = any(node in reply for reply in replies)
    return answered, f"{node}: {'pong' if answered else 'no reply to ping'}"


def check_simulator(port: int | None) -> tuple[bool, str]:
    key = os.environ.get("SIM_API_KEY") or "sim-key"
    return _http_ok(f"http://127.0.0.1:{port or 8081}/v1/health", {"X-API-Key": key})


ROLES = ("api", "dicom", "worker", "simulator", "none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imaging-sync-healthcheck", description="Container health check of one imaging-sync role.")
    parser.add_argument("role", nargs="?", default=os.environ.get("IMAGING_SYNC_ROLE", "api"), choices=ROLES)
    parser.add_argument("--port", type=int, default=None, help="default: from the configuration (simulator: 8081)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.role == "none":
            healthy, detail = True, "no health check for this role"
        elif args.role == "api":
            healthy, detail = check_api(args.port)
        elif args.role == "dicom":
            healthy, detail = check_dicom(args.port)
        elif args.role == "worker":
            healthy, detail = check_worker()
        else:
            healthy, detail = check_simulator(args.port)
    except Exception as exc:  # a health check reports; it never shows a traceback
        healthy, detail = False, f"{type(exc).__name__}: {exc}"
    print(f"{args.role}: {'healthy' if healthy else 'UNHEALTHY'}: {detail}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
