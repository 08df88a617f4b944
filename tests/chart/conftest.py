"""Fixtures of the chart tests; the helpers they use are in chart_helpers.py (a module name of its own,
so that `import` never picks another directory's conftest)."""

from __future__ import annotations

import pytest
from chart_helpers import Helm, locate_helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = locate_helm()
    if binary is None:
        pytest.skip(
            "helm is not built: run `bash tests/cluster/build.sh` (or `make test`, which does) to build "
            "the pinned helm from Go modules"
        )
    return Helm(binary, tmp_path_factory.mktemp("helm"))
