"""Which processes the command line runs, read from its code (for the process map, ``app.diagrams.processes``).

A command is a process when it calls a function of :mod:`app.assembly` that
builds an edge: a function that imports ``api``, ``dicom`` or ``jobs`` (the
assembly's own rule: "each edge is imported by the function that builds it").
A command's helpers in its own module are followed, so the demo, which
assembles through ``run_demo`` and ``_serve``, is found like ``serve``. What a
process runs follows from the builders it reaches (``all_in_one`` reaches the
REST API, the DICOM node and the scheduler); a Celery app is a worker or a
beat by which of Celery's entry points the command calls (``worker_main``,
``Beat``). A builder or a Celery use this module does not know is an error
naming what to add, never a process silently left off the map.

The reading is of names, not of control flow: a command that names
``assembly.dicom_server`` runs a DICOM node, whatever branch it is on.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import click
import msgspec

from app import assembly, layout
from imaging_sync.config import Settings
from storage import EmbeddedS3

EDGES = frozenset(package for package, role in layout.ROLES.items() if role == "edge")

# What a process can run, in the order the map lists them.
PARTS = ("api", "dicom", "worker", "beat", "scheduler")

# The app.assembly function that builds an edge -> the part; a Celery app is a worker or a beat by
# which of Celery's entry points the command runs.
BUILDS = {"api_app": "api", "dicom_server": "dicom", "scheduler": "scheduler"}
CELERY_BUILDER = "worker_app"
CELERY_RUNS = {"worker_main": "worker", "Beat": "beat"}


def _in_order(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node``, in source order (``ast.walk`` goes breadth first)."""
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _in_order(child)


def _syntax(function: Callable[..., Any]) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(function))))


def _references(function: Callable[..., Any]) -> tuple[list[Any], set[str]]:
    """The module-level objects ``function`` names (``name`` or ``module.name``), in source order, and every attribute it reads.

    Names the function binds itself (arguments, local variables) are not its
    module's, and are skipped. A ``"module:function"`` string, as uvicorn
    takes an app factory, stands for that function.
    """
    function = inspect.unwrap(function)
    tree = _syntax(function)
    namespace = function.__globals__
    local = {arg.arg for node in ast.walk(tree) if isinstance(node, ast.arguments)
             for arg in (*node.posonlyargs, *node.args, *node.kwonlyargs, *filter(None, (node.vararg, node.kwarg)))}
    local |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    found: list[Any] = []
    attributes: set[str] = set()
    for node in _in_order(tree):
        if isinstance(node, ast.Attribute):
            attributes.add(node.attr)
            owner = namespace.get(node.value.id) if isinstance(node.value, ast.Name) and node.value.id not in local else None
            if isinstance(owner, ModuleType) and hasattr(owner, node.attr):
                found.append(getattr(owner, node.attr))
        elif isinstance(node, ast.Name) and node.id in namespace and node.id not in local:
            found.append(namespace[node.id])
    return [_factory(obj) for obj in found], attributes


def _factory(obj: Any) -> Any:
    """``"app.assembly:name"`` -> that function; anything else as it is."""
    prefix = f"{assembly.__name__}:"
    if isinstance(obj, str) and obj.startswith(prefix):
        return getattr(assembly, obj.removeprefix(prefix), obj)
    return obj


def _is_assembly_function(obj: Any) -> bool:
    return inspect.isfunction(obj) and obj.__module__ == assembly.__name__ and not obj.__name__.startswith("_")


def assembly_functions() -> list[Callable[..., Any]]:
    """The public functions of :mod:`app.assembly`, in the order the module defines them."""
    functions = [obj for _, obj in inspect.getmembers(assembly, _is_assembly_function)]
    return sorted(functions, key=lambda function: inspect.getsourcelines(function)[1])


@dataclass(frozen=True)
class _Built:
    calls: tuple[str, ...]  # the assembly functions it calls
    edges: frozenset[str]  # the edge packages it imports itself
    objects: tuple[Any, ...]  # what else it names


def _assembly_graph() -> dict[str, _Built]:
    graph = {}
    for function in assembly_functions():
        found, _ = _references(function)
        calls = tuple(dict.fromkeys(obj.__name__ for obj in found if _is_assembly_function(obj) and obj is not function))
        graph[function.__name__] = _Built(calls, frozenset(layout.imported_packages_in(_syntax(function)) & EDGES), tuple(found))
    return graph


def _reached(names: Sequence[str], graph: Mapping[str, _Built]) -> list[str]:
    """``names`` and every assembly function they call, transitively, in first-reached order."""
    order: dict[str, None] = {}

    def visit(name: str) -> None:
        if name not in order:
            order[name] = None
            for callee in graph[name].calls:
                visit(callee)

    for name in names:
        visit(name)
    return list(order)


def _builders(name: str, graph: Mapping[str, _Built]) -> list[str]:
    """The functions that build the edges ``name`` assembles: those that import an edge and call no other such function."""
    below = [builder for callee in graph[name].calls for builder in _builders(callee, graph)]
    if below:
        return list(dict.fromkeys(below))
    return [name] if graph[name].edges else []


@dataclass
class _Reading:
    assembled_by: list[str] = field(default_factory=list)
    attributes: set[str] = field(default_factory=set)


def _read_command(callback: Callable[..., Any]) -> _Reading:
    """The assembly functions a command calls, following the functions of its own module, and the attributes it reads."""
    reading = _Reading()
    seen: set[Any] = set()

    def visit(function: Callable[..., Any]) -> None:
        function = inspect.unwrap(function)
        if function in seen:
            return
        seen.add(function)
        found, attributes = _references(function)
        reading.attributes |= attributes
        for obj in found:
            if _is_assembly_function(obj):
                if obj.__name__ not in reading.assembled_by:
                    reading.assembled_by.append(obj.__name__)
            elif inspect.isfunction(obj) and obj.__module__ == function.__module__:
                visit(obj)

    visit(callback)
    return reading


def commands(group: click.Group) -> Iterator[tuple[str, click.Command]]:
    """Every command under ``group``, groups included, by path (``"serve api"``), sorted."""

    def walk(current: click.Group, prefix: str) -> Iterator[tuple[str, click.Command]]:
        for name in sorted(current.commands):
            command = current.commands[name]
            path = f"{prefix} {name}".strip()
            yield path, command
            if isinstance(command, click.Group):
                yield from walk(command, path)

    return walk(group, "")


@dataclass(frozen=True)
class Process:
    """One process the command line runs, as read from its code."""

    command: str
    summary: str
    assembled_by: tuple[str, ...]  # the assembly functions the command calls, in order
    reaches: tuple[str, ...]  # those and every assembly function they call
    parts: tuple[str, ...]  # of PARTS, in its order
    ports: Mapping[str, int]  # part -> the port a command option gives it by default (``--api-port``)
    embedded_s3: bool  # it starts an embedded S3 when storage.embedded asks


def _parts(command: str, builders: Sequence[str], attributes: set[str]) -> tuple[str, ...]:
    parts = []
    for builder in builders:
        if builder == CELERY_BUILDER:
            runs = sorted(CELERY_RUNS[name] for name in attributes & CELERY_RUNS.keys())
            if len(runs) != 1:
                raise ValueError(f"`imaging-sync {command}` builds a Celery app but runs {runs or 'none'} of {sorted(CELERY_RUNS)}: "
                                 "say what it runs in CELERY_RUNS (app/diagrams/process_reading.py)")
            parts.append(runs[0])
        elif builder in BUILDS:
            parts.append(BUILDS[builder])
        else:
            raise ValueError(f"app.assembly.{builder} builds an edge the process map does not know: add it to BUILDS "
                             "(app/diagrams/process_reading.py) and describe its part in PARTS (app/diagrams/processes.py)")
    return tuple(sorted(dict.fromkeys(parts), key=PARTS.index))


def _option_ports(command: click.Command, parts: Sequence[str]) -> dict[str, int]:
    """part -> the default of the command's ``--PART-port`` option, for parts whose config section has a port."""
    defaults = {param.name: param.default for param in command.params if isinstance(param, click.Option)}
    return {part: value for part in parts if hasattr(getattr(Settings(), part, None), "port") and isinstance(value := defaults.get(f"{part}_port"), int)}


def settings_of(process: Process, settings: Settings) -> Settings:
    """``settings`` as the process runs them: a port its command line gives (``--api-port``) in place of the config's."""
    for part, port in process.ports.items():
        settings = msgspec.structs.replace(settings, **{part: msgspec.structs.replace(getattr(settings, part), port=port)})
    return settings


def processes(group: click.Group) -> list[Process]:
    """The processes the commands of ``group`` run, by command path."""
    graph = _assembly_graph()
    found = []
    for path, command in commands(group):
        if command.callback is None:
            continue
        reading = _read_command(command.callback)
        builders = list(dict.fromkeys(b for name in reading.assembled_by for b in _builders(name, graph)))
        if not builders:
            continue
        reaches = _reached(reading.assembled_by, graph)
        parts = _parts(path, builders, reading.attributes)
        starts_s3 = any(obj is EmbeddedS3 for name in reaches for obj in graph[name].objects)
        found.append(Process(path, _summary(command), tuple(reading.assembled_by), tuple(reaches), parts, _option_ports(command, parts), starts_s3))
    return found


def _summary(command: click.Command) -> str:
    """The first line of the command's help."""
    return (command.help or "").strip().split("\n")[0]

