"""What one thread hop costs on this machine: a sync function awaited through a worker thread.

The API's sync handlers, its connection checkout and its audit write each ran
in a hop of their own (Litestar's ``sync_to_thread``, anyio's ``to_thread``);
this prints the CPU and wall time of one hop of each kind, on uvloop as the
server runs, so that a hop saved can be weighed against a request's cost
(bench/api_latency.py --capacity prints CPU per request).

    python bench/thread_hop.py [--hops 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import anyio.to_thread
from litestar.concurrency import sync_to_thread

try:
    import uvloop
except ImportError:  # pragma: no cover - the server uses it when installed, as uvicorn does
    uvloop = None


def _nothing() -> int:
    return 1


async def _measure(call: Callable[[], Awaitable[object]], hops: int) -> tuple[float, float]:
    for _ in range(200):
        await call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(hops):
        await call()
    return (time.process_time() - cpu) / hops * 1e6, (time.perf_counter() - wall) / hops * 1e6


async def _main(hops: int) -> None:
    kinds: dict[str, Callable[[], Awaitable[object]]] = {
        "litestar sync_to_thread": lambda: sync_to_thread(_nothing),
        "anyio.to_thread.run_sync": lambda: anyio.to_thread.run_sync(_nothing),
    }
    for name, call in kinds.items():
        cpu, wall = await _measure(call, hops)
        print(f"{name:<28}{cpu:>7.0f} µs CPU {wall:>7.0f} µs wall per hop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hops", type=int, default=5000)
    args = parser.parse_args()
    print(f"one thread hop, {args.hops} in a row, {'uvloop' if uvloop else 'asyncio'}:")
    (uvloop.run if uvloop else asyncio.run)(_main(args.hops))


if __name__ == "__main__":
    main()
