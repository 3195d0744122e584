"""Shared pieces of the command line: the lazily built Core, and who is acting."""

from __future__ import annotations

import functools
import getpass
from collections.abc import Callable
from typing import Any

import click

from imaging_sync.bootstrap import Core, bootstrap


class CliContext:
    """Builds the core lazily so `--help` works without a database."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._core: Core | None = None

    @property
    def core(self) -> Core:
        if self._core is None:
            from imaging_sync.config import load_settings

            self._core = bootstrap(load_settings(self.config_path))
        return self._core


pass_ctx = click.make_pass_decorator(CliContext)


def pass_core(command: Callable[..., Any]) -> Callable[..., Any]:
    """Hand the command the process's Core (built on first use)."""

    @pass_ctx
    @functools.wraps(command)
    def wrapper(ctx: CliContext, *args: Any, **kwargs: Any) -> Any:
        return command(ctx.core, *args, **kwargs)

    return wrapper


def cli_actor() -> str:
    """The audit log's actor for privileged CLI actions: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"
