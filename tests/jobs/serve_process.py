"""Running a long-lived `imaging-sync` command as a real process in tests: read until ready, stop with SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def serving(args: list[str], env: Mapping[str, str], ready: Callable[[str], bool], timeout: float = 60) -> Iterator[str]:
    """Start ``python -m imaging_sync *args``, yield its output up to the line ``ready`` accepts.

    On leaving, SIGTERM; the process must exit 0 within 60 s (the assertion shows its output).
    """
    process = subprocess.Popen([sys.executable, "-m", "app", *args], env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = process.stdout.readline() if process.stdout else ""
            if not line and process.poll() is not None:
                break
            lines.append(line)
            if ready(line):
                break
        yield "".join(lines)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, "".join(lines) + rest
