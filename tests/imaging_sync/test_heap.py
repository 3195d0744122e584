"""freeze_startup_objects: what exists at start is exempt from collections, later garbage is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from imaging_sync.heap import freeze_startup_objects


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture
def frozen() -> Iterator[None]:
    freeze_startup_objects()
    yield
    gc.unfreeze()


def test_startup_objects_leave_the_collected_generations(frozen: None) -> None:
    assert gc.get_freeze_count() > 1000  # modules, classes, functions loaded so far
    assert gc.get_count()[0] < 100


def test_cycles_made_after_start_are_still_collected(frozen: None) -> None:
    ref = weakref.ref(Node())
    assert ref() is not None
    gc.collect()
    assert ref() is None
