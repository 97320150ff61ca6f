"""The verdict matrix: which explorations run, how malicious-kernel cells share worlds across
designs, and the markdown the docs are generated from."""

from __future__ import annotations

from sgxemu.explore import run_matrix
from sgxemu.explore.matrix import plan
from sgxemu.explore.report import _replace, matrix_markdown


def test_plan_shares_malicious_kernel_worlds_between_designs() -> None:
    jobs, alias = plan(["jit", "heap"], ["kernel", "thread"], ["merged", "v1", "soft-restrict"])
    leaf = [(j.runtime, j.kernel) for j in jobs if j.adversary == "kernel"]
    # jit's protocol differs on soft-restrict (no EMODPR): two worlds; heap's does not: one.
    assert sorted(leaf) == [("heap", "merged"), ("jit", "merged"), ("jit", "soft-restrict")]
    assert alias[("jit", "kernel", "v1")] == ("jit", "kernel", "merged")
    assert alias[("heap", "kernel", "soft-restrict")] == ("heap", "kernel", "merged")
    assert len([j for j in jobs if j.adversary == "thread"]) == 6  # one per design


def test_small_matrix_and_its_markdown() -> None:
    m = run_matrix(["jit-noaccept"], ["colluding", "thread"], ["merged", "v2"], bound=4)
    by = {(c.adversary, c.kernel): c for c in m.cells}
    assert by[("colluding", "merged")].violated and len(by[("colluding", "merged")].trace) == 4
    assert by[("colluding", "v2")].shared_with == "merged" and by[("colluding", "v2")].violated
    assert not by[("thread", "v2")].violated and by[("thread", "v2")].complete
    md = matrix_markdown(m.to_json())
    assert "| jit-noaccept | wx | **VIOLATED** (4) | **VIOLATED** (4) |" in md
    doc = "a\n<!-- matrix:begin -->\nold\n<!-- matrix:end -->\nb"
    assert _replace(doc, "matrix", "new") == "a\n<!-- matrix:begin -->\nnew\n<!-- matrix:end -->\nb"
