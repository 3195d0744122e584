"""What the infra tests share: docker-compose.yml read as compose reads it, .env.example, the real CLI.

Compose cannot run on this machine (no container engine), so the file is read
here the way compose would: YAML with merge keys, then ``${VAR}``
interpolation from .env (for the tests: .env.example), then each service's
command checked against the real ``imaging-sync`` click tree and each
environment loaded through ``imaging_sync.config.load_settings``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from devtools import ports

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "infra" / "Dockerfile"
COMPOSE_CONFIG = REPO / "infra" / "imaging-sync.compose.toml"
HEALTHCHECK_SCRIPT = REPO / "infra" / "healthcheck.py"
# The image's ENTRYPOINT (infra/Dockerfile): services built from it run `imaging-sync …`.
APP_ENTRYPOINT = ["imaging-sync"]

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>.*))?$", re.S)


class InterpolationError(ValueError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (comments and blanks skipped), as compose reads an .env file."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            raise ValueError(f"{path.name}:{number}: not NAME=value: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def interpolate(value: str, env: Mapping[str, str], where: str = "") -> str:
    """Compose's variable syntax: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("named"):
            return env.get(match.group("named"), "")
        braced = _BRACED.match(match.group("braced"))
        if not braced:
            raise InterpolationError(f"{where}: invalid interpolation {match.group(0)!r}")
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg") or ""
        present = name in env
        set_nonempty = present and env[name] != ""
        if op is None:
            return env.get(name, "")
        if op == ":-":
            return env[name] if set_nonempty else interpolate(arg, env, where)
        if op == "-":
            return env[name] if present else interpolate(arg, env, where)
        if op in (":?", "?") and not (set_nonempty if op == ":?" else present):
            raise InterpolationError(f"{where}: required variable {name} is missing: {arg}")
        return env[name]

    return _VARIABLE.sub(replace, value)


def interpolate_tree(node: Any, env: Mapping[str, str], where: str = "") -> Any:
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, list):
        return [interpolate_tree(item, env, f"{where}[{i}]") for i, item in enumerate(node)]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env, f"{where}.{key}" if where else str(key)) for key, value in node.items()}
    return node


def raw_compose() -> dict[str, Any]:
    """The YAML as written (merge keys applied by the loader), before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def compose_model(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as compose sees it with ``env`` (default: .env.example) as its .env."""
    return interpolate_tree(raw_compose(), read_env_file(ENV_EXAMPLE) if env is None else env)


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))

    def host_path(self) -> Path:
        return (REPO / self.source).resolve()


def mounts_of(service: Mapping[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found.append(Mount(str(volume["source"]), str(volume["target"]), bool(volume.get("read_only"))))
            continue
        parts = str(volume).split(":")
        found.append(Mount(parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return found


def host_path_for(service: Mapping[str, Any], container_path: str) -> Path | None:
    """Where a path inside the container comes from in the repository (through a bind mount)."""
    for mount in mounts_of(service):
        if not mount.is_bind:
            continue
        target = mount.target.rstrip("/")
        if container_path == target:
            return mount.host_path()
        if container_path.startswith(target + "/"):
            return mount.host_path() / container_path[len(target) + 1:]
    return None


def builds_our_image(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    if not build:
        return False
    dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
    context = build.get("context", ".") if isinstance(build, dict) else build
    return (REPO / context / dockerfile).resolve() == DOCKERFILE.resolve()


def argv_of(service: Mapping[str, Any]) -> list[str]:
    """entrypoint + command, as the container runs them (the image's ENTRYPOINT when not overridden)."""
    entrypoint = service.get("entrypoint")
    command = service.get("command") or []
    if isinstance(entrypoint, str) or isinstance(command, str):
        raise AssertionError(f"use the list form for entrypoint and command (no shell): {entrypoint!r} {command!r}")
    if entrypoint is None:
        entrypoint = APP_ENTRYPOINT if builds_our_image(service) else []
    return [str(a) for a in [*entrypoint, *command]]


# -- the real CLI ----------------------------------------------------------------------------


def resolve_cli(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """``["serve", "api", "--port", "1"]`` -> (["serve", "api"], the click command, ["--port", "1"]).

    Uses the real root group, so entry-point commands (api, dicom, jobs) resolve
    exactly as ``imaging-sync`` resolves them. LookupError names a missing one.
    """
    from app.cli import cli

    ctx = click.Context(cli, info_name="imaging-sync")
    command: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise LookupError(
                f"`imaging-sync {' '.join([*path, rest[0]])}` does not exist "
                f"(known under `imaging-sync {' '.join(path)}`: {', '.join(command.list_commands(ctx))}); "
                "if another package contributes it, is its entry point installed (pip install -e .)?"
            )
        path.append(rest.pop(0))
        command = sub
        ctx = click.Context(command, info_name=path[-1], parent=ctx)
    return path, command, rest


def check_cli_args(args: list[str]) -> list[str]:
    """Parse ``args`` with the real command's own parser (option names and values), without running it."""
    path, command, rest = resolve_cli(args)
    if isinstance(command, click.Group):
        raise LookupError(f"`imaging-sync {' '.join(args)}` names the group `{' '.join(path)}`, not a command")
    from app.cli import cli

    root = click.Context(cli, info_name="imaging-sync")
    # A placeholder the reader replaces (RUN_ID, EVENT_ID) stands for a well-formed value.
    filled = [PLACEHOLDER_UUID if re.fullmatch(r"[A-Z]+_ID", arg) else arg for arg in rest]
    command.make_context(" ".join(path), filled, parent=root)  # raises click.UsageError / BadParameter
    return path


PLACEHOLDER_UUID = "01a23af6-dd11-7115-879f-d405ec74b6cc"


# -- processes ---------------------------------------------------------------------------------


free_port = ports.free_port  # outside the ephemeral range (devtools/ports.py)


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any IMAGING_SYNC settings of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGING_SYNC")}
    env.update(extra)
    return env


def run(args: list[str], env: Mapping[str, str], *, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def imaging_sync(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "app", *args]


@dataclass
class Background:
    """A long-running process of the test's own; stopped (SIGTERM, then SIGKILL) by ``stop``."""

    process: subprocess.Popen[str]
    name: str

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        out = self.process.stdout.read() if self.process.stdout else ""
        return out


def start(args: list[str], env: Mapping[str, str], name: str, *, cwd: Path | None = None) -> Background:
    process = subprocess.Popen(args, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return Background(process, name)


def wait_until(probe: Any, what: str, *, timeout: float = 30, alive: Background | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if alive is not None and alive.process.poll() is not None:
            raise AssertionError(f"{alive.name} exited with {alive.process.returncode} while waiting for {what}:\n{alive.stop()}")
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last answer: {last!r}")


def docker_services(model: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from sorted(model["services"].items())
