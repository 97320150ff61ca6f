"""always-mmap: any rights inside ELRANGE; the EPCM alone enforces."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from variants_support import Built

from sgxemu.linux.encl import READ_IMPLIES_EXEC
from sgxemu.linux.mman import MAP_FIXED, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE
from sgxemu.testenclave import protocol as P

PAGE = 4096
RWX = PROT_READ | PROT_WRITE | PROT_EXEC


def _text(b: Built) -> int:
    return b.encl.base + b.image.segments[1].offset


@pytest.mark.parametrize("kernel, allowed", [("always-mmap", True), ("merged", False)])
def test_mprotect_any_rights(build: Callable[..., Built], kernel: str, allowed: bool) -> None:
    b = build(kernel)
    for addr in (_text(b), b.encl.base):  # the RX text page, a TCS page
        if allowed:
            b.proc.mprotect(addr, PAGE, RWX)
        else:
            with pytest.raises(OSError) as e:
                b.proc.mprotect(addr, PAGE, RWX)
            assert e.value.errno == errno.EACCES


def test_epcm_refuses_what_the_mapping_allows(build: Callable[..., Built]) -> None:
    b = build("always-mmap")
    text = _text(b)
    b.proc.mprotect(text, PAGE, RWX)
    # The fault handler no longer refuses a VMA wider than vm_max: the text faults in RWX...
    assert b.c.nop() == 0 and b.exc() == (0, 0, 0)
    # ...and a store to it is stopped by the EPCM (R-X) alone.
    assert b.c.put(text, P.MAGIC) == 0
    assert b.exc() == (14, 0x8007, text)


def test_mmap_still_bound_to_elrange(build: Callable[..., Built]) -> None:
    b = build("always-mmap")
    with pytest.raises(OSError) as e:
        b.proc.mmap(b.encl.base - PAGE, 2 * PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, b.encl.fd, 0)
    assert e.value.errno == errno.EACCES
    b.proc.mmap(b.encl.base + b.T, PAGE, RWX, MAP_SHARED | MAP_FIXED, b.encl.fd, 0)


@pytest.mark.parametrize("kernel, allowed", [("always-mmap", True), ("merged", False)])
def test_read_implies_exec(build: Callable[..., Built], kernel: str, allowed: bool) -> None:
    b = build(kernel)
    b.proc.personality |= READ_IMPLIES_EXEC
    if allowed:
        b.proc.mmap(b.D, PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, b.encl.fd, 0)
    else:
        with pytest.raises(OSError) as e:
            b.proc.mprotect(b.D, PAGE, PROT_READ)
        assert e.value.errno == errno.EACCES
