"""A lean HTTP/1.1 load generator: keep-alive connections on raw asyncio streams.

Why not httpx here: on a two-core machine the load generator shares the CPU
with the server it measures. httpx spends about a millisecond of CPU per
request (its connection pool, header models, URL parsing); this client spends
a tenth of that, so the figures describe the server rather than the client.
It speaks just enough HTTP/1.1 for a JSON API on loopback: GET with
keep-alive, responses framed by Content-Length or chunked encoding.

Open loop (:func:`open_loop`): request *i* is due at ``i / rate`` and its
latency counts from then, so time spent waiting for a free connection is
included (no coordinated omission). The connections are opened before the
clock starts and each request is started when it is due: creating every
request's task up front had the generator busy for the first ~100 ms of a
run, and the first requests were measured late by that. Closed loop (:func:`closed_loop`): each
connection sends its next request as soon as the last one ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    due_s: list[float] = field(default_factory=list)  # when each request was due, from the start (same order)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    def slow_seconds(self, over_ms: float) -> dict[int, int]:
        """Second of the run -> how many requests due in it took over ``over_ms``: spread out, or one stall?"""
        counts: dict[int, int] = {}
        for due, latency in zip(self.due_s, self.latencies_ms, strict=True):
            if latency > over_ms:
                counts[int(due)] = counts.get(int(due), 0) + 1
        return counts


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items()).encode("latin-1")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str) -> tuple[int, bytes]:
        await self.connect()
        assert self._reader is not None
        self._writer.write(b"GET " + path.encode("latin-1") + b" HTTP/1.1\r\n" + self._head + b"\r\n")
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        body = await (self._chunked() if chunked else self._reader.readexactly(length or 0))
        if close:
            await self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self._reader.readexactly(size + 2))
            if size == 0:
                return b"".join(parts)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None


async def open_loop(host: str, port: int, headers: dict[str, str], paths: Sequence[str], rate: float, concurrency: int) -> Results:
    """Send ``paths`` on schedule (``rate`` per second) over at most ``concurrency`` connections."""
    results = Results()
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    connections = [Connection(host, port, headers) for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in connections))
    for conn in connections:
        idle.put_nowait(conn)

    async def one(due: float, path: str) -> None:
        conn = await idle.get()
        try:
            status, _ = await conn.get(path)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status = 0
            await conn.close()
        finally:
            idle.put_nowait(conn)
        results.latencies_ms.append((time.perf_counter() - due) * 1000)
        results.due_s.append(due - start)
        results.statuses[status] = results.statuses.get(status, 0) + 1

    start = time.perf_counter()
    started = []
    for i, path in enumerate(paths):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        started.append(asyncio.create_task(one(due, path)))
    await asyncio.gather(*started)
    while not idle.empty():
        await idle.get_nowait().close()
    return results


async def closed_loop(host: str, port: int, headers: dict[str, str], paths: Sequence[str], concurrency: int) -> float:
    """Requests per second with ``concurrency`` connections kept busy."""
    queue = list(reversed(paths))

    async def worker() -> None:
        conn = Connection(host, port, headers)
        try:
            while queue:
                await conn.get(queue.pop())
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(paths) / (time.perf_counter() - started)
