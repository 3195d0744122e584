"""Shared pieces of the command line: the settings and the Core, built lazily, and who is acting."""

from __future__ import annotations

import functools
import os
import pwd
import socket
from collections.abc import Callable
from typing import Any

import click

from imaging_sync.config import CONFIG_ENV, Settings
from imaging_sync.core import Core


class CliContext:
    """Builds the settings and the core on first use, so `--help` and usage errors need no config or database.

    ``config_flag``: whether ``--config`` was given on the command line (an
    error about the file then names ``--config``, else ``IMAGING_SYNC_CONFIG``).
    ``verbose``: libraries' INFO lines (Alembic, botocore, …) reach the console.
    """

    def __init__(self, config_path: str | None, *, config_flag: bool = False, verbose: bool = False) -> None:
        self.config_path = config_path
        self.config_flag = config_flag
        self.verbose = verbose
        self._settings: Settings | None = None
        self._core: Core | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from imaging_sync.config import load_settings

            self._settings = load_settings(self.config_path, path_key="--config" if self.config_flag else CONFIG_ENV)
        return self._settings

    @property
    def core(self) -> Core:
        """The core, database not touched yet (``db upgrade`` creates the database through it)."""
        if self._core is None:
            from app.assembly import open_core  # local: --help and usage errors import no edge

            self._core = open_core(self.settings, verbose=self.verbose)
        return self._core

    @property
    def ready_core(self) -> Core:
        """The core of a database that exists at the current schema: DatabaseError (exit 4, the `db upgrade` hint) otherwise.

        Checked before anything connects, so a command never creates an empty SQLite file.
        """
        core = self.core
        core.require_current_schema()
        return core


pass_ctx = click.make_pass_decorator(CliContext)


def pass_core(command: Callable[..., Any]) -> Callable[..., Any]:
    """Hand the command the process's Core at the current schema (built on first use)."""

    @pass_ctx
    @functools.wraps(command)
    def wrapper(ctx: CliContext, *args: Any, **kwargs: Any) -> Any:
        return command(ctx.ready_core, *args, **kwargs)

    return wrapper


ACTOR_LENGTH = 128  # audit_log.actor


def cli_actor() -> str:
    """The audit log's actor for CLI actions: ``cli:<account>@<host>``, the OS account of the process's real uid.

    Not ``getpass.getuser()``: it reads ``$LOGNAME``, ``$USER`` and
    ``$USERNAME`` first, so ``LOGNAME=anyone imaging-sync …`` rewrote who did
    it. The uid is the kernel's; an account the password database does not
    know (a container's arbitrary uid) is its number. The host tells two
    machines' ``alice`` apart. Cut to the column's 128 characters.
    """
    uid = os.getuid()
    try:
        account = pwd.getpwuid(uid).pw_name or str(uid)
    except KeyError:
        account = str(uid)
    try:
        host = socket.gethostname() or "unknown-host"
    except OSError:
        host = "unknown-host"
    return f"cli:{account}@{host}"[:ACTOR_LENGTH]
