"""The documentation builds with MkDocs (material theme) in strict mode: a broken link, a page
missing from the navigation's targets, or any other warning fails the build, and this test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "sgxemu" in home and "./test.sh" in home  # the README, included
    for page in (
        "architecture/index.html",
        "trace/index.html",
        "hardware-model/index.html",
        "abi/sgx_ioc_enclave_add_pages/index.html",
        "abi/vdso_sgx_enter_enclave/index.html",
        "tutorials/edmm-in-ci/index.html",
    ):
        assert (site / page).is_file(), page
    for img in ("layers.svg", "eaug-on-fault.svg", "trace-eaug-on-fault.png"):
        assert (site / "img" / img).is_file(), img


def test_readme_links_are_rewritten_for_the_site() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = (
        "See [the ABI](docs/abi/index.md), ![img](docs/img/layers.svg), "
        "[bench](bench/run.py), [site](https://example.org) and [top](#why)."
    )
    out = hooks._LINK.sub(hooks._rewrite, text)
    assert out == (
        "See [the ABI](abi/index.md), ![img](img/layers.svg), "
        "bench (`bench/run.py`), [site](https://example.org) and [top](#why)."
    )
