"""Which processes the command line runs is read from its code: a new process command is found, a plain command is not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click
import pytest

from app import assembly
from app.cli import cli
from app.diagrams import process_reading, processes
from app.diagrams.process_reading import commands
from imaging_sync.config import Settings


def _with(*extra: click.Command) -> click.Group:
    """A copy of the imaging-sync command group with ``extra`` commands added (the real group is left alone)."""
    return click.Group("imaging-sync", commands={**cli.commands, **{command.name or "": command for command in extra}})


def _found(group: click.Group = cli) -> dict[str, process_reading.Process]:
    return {process.command: process for process in process_reading.processes(group)}


def test_the_processes_are_the_long_running_commands() -> None:
    assert set(_found()) == {"serve api", "serve dicom", "worker", "beat", "serve", "demo"}


def test_what_each_process_runs_follows_from_the_assembly_it_reaches() -> None:
    found = _found()

    assert found["serve api"].parts == ("api",)
    assert found["serve dicom"].parts == ("dicom",)
    assert found["worker"].parts == ("worker",)
    assert found["beat"].parts == ("beat",)
    assert found["serve"].parts == found["demo"].parts == ("api", "dicom", "scheduler")


def test_the_app_factory_uvicorn_takes_by_name_counts_as_a_call() -> None:
    serve_api = _found()["serve api"]

    assert "api_app_from_environment" in serve_api.assembled_by
    assert "api_app" in serve_api.reaches


def test_the_demo_is_found_through_its_own_helpers() -> None:
    demo = _found()["demo"]

    assert demo.assembled_by == ("open_process", "all_in_one")
    assert demo.ports == {"api": 8080, "dicom": 11112}


def test_commands_that_assemble_no_edge_are_not_processes() -> None:
    found = _found()

    assert {"sync", "doctor", "db upgrade", "audit archive", "docs generate"} <= dict(commands(cli)).keys()
    assert not {"sync", "doctor", "db upgrade", "audit archive", "docs generate"} & found.keys()


def test_a_new_process_command_is_found_with_its_port_option() -> None:
    @click.command("relay-node")
    @click.option("--dicom-port", default=4242)
    def relay_node(dicom_port: int) -> None:
        """Run a second DICOM node for a relay."""
        with assembly.open_process(Settings()) as process:
            assembly.dicom_server(process).serve_forever()

    found = _found(_with(relay_node))["relay-node"]

    assert found.parts == ("dicom",)
    assert found.summary == "Run a second DICOM node for a relay."
    assert found.assembled_by == ("open_process", "dicom_server")
    assert found.ports == {"dicom": 4242}
    assert found.embedded_s3


def test_a_name_bound_locally_is_not_taken_for_the_assembly_function_of_that_name() -> None:
    @click.command("shadow")
    def shadow() -> None:
        """Uses a local called scheduler, not the assembly's."""
        scheduler = object()
        print(scheduler)

    assert "shadow" not in _found(_with(shadow))


def test_a_celery_command_that_runs_neither_a_worker_nor_beat_is_an_error_naming_the_fix() -> None:
    @click.command("flower")
    def flower() -> None:
        """Builds the Celery app but runs neither entry point."""
        assembly.worker_app(Settings()).control.ping()

    with pytest.raises(ValueError, match="CELERY_RUNS"):
        process_reading.processes(_with(flower))


def relay_app(settings: Settings) -> Any:
    """An edge builder the process map does not know yet."""
    from jobs.app import create_app

    return create_app(settings)


@pytest.fixture
def unknown_builder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(relay_app, "__module__", assembly.__name__)
    monkeypatch.setattr(assembly, "relay_app", relay_app, raising=False)
    yield


@pytest.mark.usefixtures("unknown_builder")
def test_an_assembly_function_that_builds_an_unknown_edge_is_an_error_naming_where_to_describe_it() -> None:
    @click.command("relay")
    def relay() -> None:
        """Run the relay."""
        assembly.relay_app(Settings())  # added by the fixture

    with pytest.raises(ValueError, match=r"app\.assembly\.relay_app .*BUILDS .*PARTS"):
        process_reading.processes(_with(relay))


def test_every_part_the_reader_can_find_is_described_on_the_map() -> None:
    assert set(process_reading.PARTS) == set(processes.PARTS)
    assert set(process_reading.BUILDS.values()) | set(process_reading.CELERY_RUNS.values()) == set(process_reading.PARTS)


def test_commands_walks_groups_and_their_subcommands_in_order() -> None:
    paths = [path for path, _ in commands(cli)]

    assert paths == sorted(paths)
    assert paths.index("serve") < paths.index("serve api") < paths.index("serve dicom")
