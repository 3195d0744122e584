"""infra/runbook.md only tells the on-call engineer to run commands and call endpoints that exist.

Every ``imaging-sync …`` command in a code span or block is parsed by the real
command's own parser (entry-point commands included), and every ``/api/v1``
path, ``/ready`` and ``/health`` must be a route of the real API application.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from infra_support import REPO, check_cli_args

RUNBOOK = REPO / "infra" / "runbook.md"
TEXT = RUNBOOK.read_text(encoding="utf-8")
INCIDENTS = [
    "Database down",
    "Partner API down or returning 401",
    "S3 access denied for one bucket",
    "Sync stuck or skipped because the lock is held",
    "Outbox backlog growing",
    "DICOM peer cannot connect or C-MOVE fails",
    "Disk full",
    "Audit log fails verification or is not being sealed",
]


def _code() -> list[str]:
    """Fenced blocks and inline code spans: where commands are written."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", TEXT, re.S | re.M)
    prose = re.sub(r"^```[a-z]*\n.*?^```", "", TEXT, flags=re.S | re.M)
    return fenced + re.findall(r"`([^`\n]+)`", prose)


def _commands() -> list[list[str]]:
    found = []
    for code in _code():
        for line in code.splitlines():
            for match in re.finditer(r"(?:(?<=\s)|^)imaging-sync (.*)$", line):
                rest = re.split(r"\s+#|\s*\||\s*;|\s*&&|\s*>>", match.group(1))[0]
                args = shlex.split(rest)
                if args and re.fullmatch(r"[a-z][a-z-]*", args[0]):
                    found.append(args)
    return found


COMMANDS = _commands()


def test_the_runbook_uses_the_service_own_commands() -> None:
    used = {" ".join(args[:2]) if args[0] in ("runs", "partners", "rejected", "outbox", "db", "apikeys") else args[0] for args in COMMANDS}
    assert {"doctor", "runs list", "runs show", "partners list", "rejected list", "outbox status", "db current", "sync"} <= used, sorted(used)


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_every_command_in_the_runbook_exists_with_those_options(args: list[str]) -> None:
    try:
        check_cli_args(args)
    except LookupError as exc:
        pytest.fail(f"runbook: {exc}")
    except Exception as exc:  # click refuses an option or value
        pytest.fail(f"runbook says `imaging-sync {' '.join(args)}`, which the command refuses: {exc}")


def test_every_endpoint_in_the_runbook_is_a_route_of_the_api(tmp_path: Path) -> None:
    from app.assembly import api_app, open_core
    from imaging_sync.config import DatabaseConfig, Settings
    from storage import BucketRegistry

    core = open_core(Settings(database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'routes.db'}")), configure_logs=False)
    try:
        app = api_app(core, BucketRegistry(core.settings.storage))
        routes = {re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path) for route in app.routes}
    finally:
        core.close()
    mentioned = set(re.findall(r"(/api/v1/[A-Za-z0-9_{}/-]*[A-Za-z0-9_}])", TEXT)) | set(re.findall(r"(?<![\w/])(/ready|/health)\b", TEXT))
    assert {"/ready", "/health", "/api/v1/audit"} <= mentioned
    missing = sorted(path for path in mentioned if path not in routes)
    assert not missing, f"the runbook names endpoints the API does not have: {missing} (routes: {sorted(routes)})"


@pytest.mark.parametrize("incident", INCIDENTS)
def test_each_likely_incident_has_symptom_confirmation_action_and_fix(incident: str) -> None:
    match = re.search(rf"^## {re.escape(incident)}\n(.*?)(?=^## |^---|\Z)", TEXT, re.S | re.M)
    assert match, f"no section '## {incident}'"
    body = match.group(1)
    for part in ("**Symptom.**", "**Confirm.**", "**Immediate action.**", "**Fix.**"):
        assert part in body, f"{incident}: missing {part}"
    assert "imaging-sync " in body, f"{incident}: confirm it with the service's own commands"


def test_severity_levels_have_response_times() -> None:
    for level in ("SEV1", "SEV2", "SEV3", "SEV4"):
        assert re.search(rf"\*\*{level}\*\*.*\|.*\|.*\|.*(min|h\b|business day|week)", TEXT), f"{level} needs a response time"


def test_internal_links_point_at_sections() -> None:
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", TEXT, re.M)}
    for target in re.findall(r"\]\(#([^)]+)\)", TEXT):
        assert target in anchors, f"link to #{target}, but no such heading"


def test_every_compose_service_the_runbook_names_exists() -> None:
    from infra_support import compose_model

    services = set(compose_model()["services"])
    takes_value = {"--since", "--tail", "--entrypoint", "-e", "--profile", "-u", "--user", "-w", "--workdir"}
    checked = 0
    for code in _code():
        for line in code.splitlines():
            for match in re.finditer(r"""docker compose ((?:--profile \S+ )?)(exec|run|logs|up|stop|restart|ps)\b([^|;&#>'"]*)""", line):
                tokens = shlex.split(match.group(3))
                named: list[str] = []
                skip = False
                for token in tokens:
                    if skip:
                        skip = False
                        continue
                    if token.startswith("-"):
                        skip = token in takes_value
                        continue
                    named.append(token)
                    if match.group(2) in ("exec", "run"):
                        break  # what follows is the command run inside
                for name in named:
                    checked += 1
                    assert name in services, f"runbook: `{match.group(0).strip()}` names {name!r}, not a compose service"
    assert checked >= 10
