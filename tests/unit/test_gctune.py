"""The garbage-collector settings of the mesh's processes: startup's heap frozen, later garbage still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from observability.gctune import YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """This test process's collector as it was (pytest's own objects are not to stay frozen)."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class Node:
    """A container object that can be part of a reference cycle."""

    other: Node | None = None


def test_startup_heap_is_frozen_and_the_young_generation_collected_less_often(restored_gc: None) -> None:
    _, middle, old = gc.get_threshold()
    startup = Node()
    startup.other = startup  # a cycle alive at startup: frozen, so never walked again

    tune_gc()

    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert startup not in gc.get_objects()  # frozen objects are out of every generation


def test_garbage_made_after_startup_is_still_collected(restored_gc: None) -> None:
    tune_gc()
    later = Node()
    later.other = later  # a cycle: only the cyclic collector frees it
    gone = weakref.ref(later)
    del later

    gc.collect()

    assert gone() is None
