"""Test-wide set-up: the processor invariant checker runs after every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sgxemu.hw import invariants, processor
from sgxemu.linux.load import sign
from sgxemu.loader.selftest_layout import EnclaveImage, load_segments
from sgxemu.sign import generate_key
from sgxemu.testenclave import build_test_enclave


@pytest.fixture(autouse=True)
def _check_invariants() -> Iterator[None]:
    before = set(map(id, processor.live_processors))
    yield
    for cpu in list(processor.live_processors):
        if id(cpu) not in before:
            invariants.check(cpu)


# The project's test enclave, its layout and a SIGSTRUCT for it: built once per session.
@pytest.fixture(scope="session")
def elf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_enclave(tmp_path_factory.mktemp("test-encl"))


@pytest.fixture(scope="session")
def key() -> rsa.RSAPrivateKey:
    return generate_key()


@pytest.fixture(scope="session")
def image(elf_path: Path) -> EnclaveImage:
    return load_segments(elf_path)


@pytest.fixture(scope="session")
def sigstruct(image: EnclaveImage, key: rsa.RSAPrivateKey) -> bytes:
    return sign(image, key)


# The preload tests' C host program (tests/preload/host.c) and what it runs: tests/preload and the
# `sgxemu exec` CLI tests share one build.
@pytest.fixture(scope="session")
def built(
    tmp_path_factory: pytest.TempPathFactory, elf_path: Path, image: EnclaveImage, sigstruct: bytes
) -> dict[str, Any]:
    from hostprog import compile_host
    from sgxemu.preload import build_preload

    out = tmp_path_factory.mktemp("preload")
    (out / "sig.bin").write_bytes(sigstruct)
    return {"elf": elf_path, "image": image, "sig": sigstruct, "sig_path": out / "sig.bin",
            "host": compile_host(out), "lib": build_preload(), "dir": out}  # fmt: skip
