"""The process map and the layout picture follow the code: a new process, a changed port, a new job or a changed rule shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest

from app import assembly, layout
from app.cli import cli
from app.diagrams import process_reading, processes
from app.diagrams.markers import fill
from imaging_sync import task_names
from imaging_sync.config import ApiConfig, DicomConfig, JobsConfig, Settings
from jobs.schedule import build_beat_schedule

REPO = Path(__file__).parents[3]
ARROW = re.compile(r"^\s*pkg_(\w+) (-->|-\.->\|[^|]*\|) pkg_(\w+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def drawn() -> dict[str, str]:
    """The parts as ``imaging-sync docs generate`` draws them: this command line, default settings."""
    return processes.parts()


def _maps(parts: dict[str, str]) -> str:
    return parts["process-map"] + parts["one-process-maps"]


def test_every_process_of_the_command_line_is_on_a_map_and_in_the_table(drawn: dict[str, str]) -> None:
    parts = drawn

    for command in ("serve api", "serve dicom", "worker", "beat", "serve", "demo"):
        assert f'("imaging-sync {command}<br/>' in _maps(parts), command
        assert f"| `imaging-sync {command}` |" in parts["process-table"], command


def test_production_processes_and_all_in_one_processes_are_drawn_apart(drawn: dict[str, str]) -> None:
    parts = drawn

    assert "p_serve_api(" in parts["process-map"] and "p_serve(" not in parts["process-map"]
    assert "p_serve(" in parts["one-process-maps"] and "p_demo(" in parts["one-process-maps"]
    assert 'p_owner[["imaging-sync db upgrade, audit archive' in parts["process-map"]


def test_a_new_process_command_appears_on_the_map() -> None:
    @click.command("relay-node")
    @click.option("--dicom-port", default=4242)
    def relay_node(dicom_port: int) -> None:
        """Run a second DICOM node for a relay."""
        with assembly.open_process(Settings()) as process:
            assembly.dicom_server(process).serve_forever()

    group = click.Group("imaging-sync", commands={**cli.commands, "relay-node": relay_node})

    parts = processes.parts(group)

    assert 'p_relay_node("imaging-sync relay-node<br/>DICOM node")' in parts["process-map"]
    assert 'x_pacs -->|"DICOM :4242, AE IMAGING_SYNC<br/>C-FIND, C-MOVE, C-GET"| p_relay_node' in parts["process-map"]
    assert "| DICOM node | `imaging-sync relay-node` | `open_process`, `dicom_server` | DICOM 127.0.0.1:4242, AE IMAGING_SYNC" in parts["process-table"]
    assert "- `imaging-sync relay-node`: Run a second DICOM node for a relay." in parts["process-table"]


def test_changed_default_ports_and_ae_title_appear() -> None:
    settings = Settings(api=ApiConfig(port=9090), dicom=DicomConfig(port=1104, ae_title="FEDERATION"))

    parts = processes.parts(settings=settings)

    assert 'x_clients -->|"HTTP :9090 /api/v1, /dicomweb"| p_serve_api' in parts["process-map"]
    assert 'x_pacs -->|"DICOM :1104, AE FEDERATION<br/>C-FIND, C-MOVE, C-GET"| p_serve_dicom' in parts["process-map"]
    assert "| REST API | `imaging-sync serve api` |" in parts["process-table"]
    assert "HTTP 127.0.0.1:9090" in parts["process-table"] and "DICOM 127.0.0.1:1104, AE FEDERATION" in parts["process-table"]
    assert ":8080" not in parts["process-map"]
    # The demo listens where its own options say, whatever the config's defaults.
    assert 'x_clients -->|"HTTP :8080 /api/v1, /dicomweb"| p_demo' in parts["one-process-maps"]


def test_the_defaults_are_the_config_s_own(drawn: dict[str, str]) -> None:
    defaults = Settings()
    parts = drawn

    assert f"HTTP {defaults.api.host}:{defaults.api.port}" in parts["process-table"]
    assert f"AE {defaults.dicom.ae_title}" in parts["process-table"]
    assert f"`{task_names.QUEUE}`" in parts["queue"] and defaults.jobs.broker_url in parts["queue"]
    assert defaults.database.url in parts["process-map"]


def test_the_scheduled_jobs_are_the_beat_schedule_with_what_turns_each_on(drawn: dict[str, str]) -> None:
    table = drawn["scheduled-jobs"]

    rows = {row.split(" | ")[0].strip("| `"): row for row in table.splitlines()[2:]}
    assert set(rows) == {"sync-partner-{partner}", "relay-outbox", "seal-audit", "relay-atna", "check-alerts", "prune"}
    assert "crontab `0 6,18 * * *`, UTC | each enabled partner" in rows["sync-partner-{partner}"]
    assert "every 15 s | an outbox sink" in rows["relay-outbox"]
    assert "every 1 min | always" in rows["seal-audit"]
    assert "every 30 s | [audit.atna] | ATNA Audit Record Repository (syslog TLS :6514" in rows["relay-atna"]
    assert "crontab `30 3 * * *`, UTC | always | nothing else" in rows["prune"]


def test_changed_job_timings_appear() -> None:
    settings = Settings(jobs=JobsConfig(default_schedule="15 4 * * 1-5", timezone="Asia/Seoul", outbox_relay_seconds=42, alerts_check_seconds=7200))

    table = processes.parts(settings=settings)["scheduled-jobs"]

    assert "crontab `15 4 * * 1-5`, Asia/Seoul" in table
    assert "every 42 s" in table and "every 2 h" in table


def test_a_new_scheduled_task_the_map_cannot_place_is_an_error_naming_where_to_describe_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def with_a_new_job(settings: Settings, nowfun: Any = None) -> dict[str, dict[str, Any]]:
        schedule = build_beat_schedule(settings, nowfun)
        return {**schedule, "reindex": {**schedule["prune"], "task": "imaging_sync.jobs.reindex"}}

    monkeypatch.setattr("app.diagrams.processes.build_beat_schedule", with_a_new_job)

    with pytest.raises(ValueError, match=r"imaging_sync\.jobs\.reindex \(reindex\).*TASK_LINKS"):
        processes.parts()


def test_beat_talks_to_the_broker_alone_and_the_worker_to_what_its_jobs_reach(drawn: dict[str, str]) -> None:
    map_ = drawn["process-map"]

    beat = [line for line in map_.splitlines() if "p_beat" in line and "-->" in line]
    assert beat == ['  p_beat -->|"scheduled tasks to queue imaging-sync"| x_broker']
    for target in ("x_database", "x_partner_api", "x_webhook", "x_alerts", "x_atna", "x_audit_buckets"):
        assert re.search(rf"^  p_worker -\.?->\|[^|]*\| {target}$", map_, re.MULTILINE), target
    assert '  x_broker -->|"tasks from queue imaging-sync"| p_worker' in map_


def test_the_demo_reaches_its_stand_ins_instead_of_the_real_systems(drawn: dict[str, str]) -> None:
    demo = drawn["one-process-maps"].split("**`imaging-sync demo`**")[1]

    assert "p_demo -->|\"SQL\"| x_sqlite_workdir" in demo
    assert "p_demo -->|\"HTTP pulls on loopback, API key\"| x_simulators" in demo
    assert "x_clients -->|\"GET, presigned URL\"| x_embedded_s3" in demo
    assert "x_partner_api" not in demo and "x_buckets" not in demo and "x_database" not in demo


def test_the_databases_table_names_the_roles_connection_url_chooses(drawn: dict[str, str]) -> None:
    table = drawn["databases"]

    migrate, serve = table.splitlines()[2:4]
    assert migrate.startswith('| `"migrate"` | `imaging_sync`: ') and "`imaging-sync db upgrade`, `imaging-sync audit archive`" in migrate
    assert serve.startswith('| `"serve"` | `imaging_sync_app`: `database.runtime_role`')
    assert "`serve api`" in serve and "`worker`" in serve and "`beat`" not in serve


def test_the_assembly_table_has_every_function_of_the_assembly_with_its_docstring(drawn: dict[str, str]) -> None:
    table = drawn["assembly"]

    assert "| `all_in_one` | ``imaging-sync serve`` (and the demo): the REST API, the DICOM node and the scheduler, in start order. | `serve`, `demo` |" in table
    assert "| `worker_app` |" in table and "| `api_app_from_environment` |" in table
    assert len(table.splitlines()) - 2 == len(process_reading.assembly_functions())


def _arrows(diagram: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    solid = {(source, target) for source, kind, target in ARROW.findall(diagram) if kind == "-->"}
    dotted = {(source, target) for source, kind, target in ARROW.findall(diagram) if kind != "-->"}
    return solid, dotted


def test_the_layout_diagram_has_exactly_the_arrows_of_the_rule(drawn: dict[str, str]) -> None:
    solid, dotted = _arrows(drawn["package-layout"])

    assert solid == {(package, other) for package, allowed in layout.ALLOWED.items() for other in allowed}
    assert dotted == {("app", "devtools")}


def test_a_changed_rule_changes_the_layout_diagram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(layout.ALLOWED, "dicom", layout.ALLOWED["dicom"] | {"api"})

    diagram = processes.parts()["package-layout"]

    assert ("dicom", "api") in _arrows(diagram)[0]


def test_the_generated_parts_do_not_depend_on_the_run(drawn: dict[str, str]) -> None:
    assert processes.parts() == drawn
    assert str(REPO) not in "".join(drawn.values())


def test_the_committed_document_has_every_part_and_matches_the_code(drawn: dict[str, str]) -> None:
    path = REPO / "docs" / "processes.md"
    text = path.read_text(encoding="utf-8")

    assert fill(text, drawn, document="docs/processes.md") == text, "run `imaging-sync docs generate`"


def test_a_command_the_map_names_but_the_command_line_lost_is_an_error() -> None:
    group = click.Group("imaging-sync", commands={name: command for name, command in cli.commands.items() if name != "demo"})

    with pytest.raises(ValueError, match="imaging-sync demo"):
        processes.parts(group)


def test_settings_of_a_process_take_its_command_line_ports() -> None:
    demo = next(process for process in process_reading.processes(cli) if process.command == "demo")
    settings = Settings(api=ApiConfig(port=1), dicom=DicomConfig(port=2))

    assert process_reading.settings_of(demo, settings).api.port == 8080
    assert process_reading.settings_of(demo, settings).dicom.port == 11112
