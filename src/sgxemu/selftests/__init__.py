"""The Linux kernel's SGX selftests (tools/testing/selftests/sgx/main.c) as plain functions over
the Python API, and a runner. One implementation of each test: `sgxemu selftest` and the
pytest suite both run these.

```python
from sgxemu.selftests import SelftestConfig, SelftestSuite
results = SelftestSuite().run_all(SelftestConfig(epc_size=8 << 20, sgx2=False))
```
"""

from .harness import Case, Outcome, TestResult
from .runner import (
    DEFAULT_EPC,
    ENGINES,
    SelftestConfig,
    SelftestSuite,
    select,
)
from .scenarios import SCENARIOS, SGX1_SKIPS

__all__ = [
    "DEFAULT_EPC",
    "ENGINES",
    "SCENARIOS",
    "SGX1_SKIPS",
    "Case",
    "Outcome",
    "SelftestConfig",
    "SelftestSuite",
    "TestResult",
    "select",
]
