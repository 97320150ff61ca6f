"""Test-wide set-up: the processor invariant checker runs after every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sgxemu.hw import invariants, processor


@pytest.fixture(autouse=True)
def _check_invariants() -> Iterator[None]:
    before = set(map(id, processor.live_processors))
    yield
    for cpu in list(processor.live_processors):
        if id(cpu) not in before:
            invariants.check(cpu)
