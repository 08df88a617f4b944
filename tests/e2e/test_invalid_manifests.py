"""The apiserver itself rejects invalid ModelDeployments (OpenAPI schema and CEL rules of the CRD).

Each file in ``invalid/`` starts with ``# field: <path>`` (the field the message must name) and
optionally ``# expect: <text>`` (a part of the message). They are checked with a server-side dry run,
the faithful check of admission; no operator is involved. The examples must pass the same dry run, so a
rejection is known to come from the rule under test and not from, say, a missing CRD.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from modeldeploy_dev.devcluster import DevCluster
from modeldeploy_dev.harness import Example, example_model_deployments, install_crds

pytestmark = pytest.mark.cluster

INVALID_DIR = Path(__file__).resolve().parent / "invalid"
MIN_INVALID_CASES = 12


@dataclass(frozen=True)
class InvalidCase:
    path: Path
    field: str
    expect: str | None

    @classmethod
    def load(cls, path: Path) -> InvalidCase:
        header = {}
        for line in path.read_text().splitlines():
            match = re.match(r"#\s*(field|expect):\s*(.+)$", line)
            if match:
                header[match.group(1)] = match.group(2).strip()
        if "field" not in header:
            raise ValueError(f"{path} lacks its '# field: <path>' header")
        return cls(path, header["field"], header.get("expect"))


CASES = [InvalidCase.load(path) for path in sorted(INVALID_DIR.glob("*.yaml"))]
EXAMPLES = example_model_deployments()


@pytest.fixture(scope="module")
def crds(cluster: DevCluster) -> None:
    install_crds(cluster)


def dry_run(cluster: DevCluster, path: Path) -> tuple[int, str]:
    # kubectl >= 1.27 asks for strict server-side field validation, so unknown fields are errors too.
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-f", str(path), check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_there_are_enough_invalid_cases() -> None:
    assert len(CASES) >= MIN_INVALID_CASES
    # Each case breaks a different rule or field.
    assert len({(case.field, case.expect) for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.path.stem for case in CASES])
def test_apiserver_rejects_invalid_manifest(cluster: DevCluster, crds: None, case: InvalidCase) -> None:
    returncode, output = dry_run(cluster, case.path)
    assert returncode != 0, f"{case.path.name} was accepted:\n{output}"
    # Refused by admission (schema or CEL), not by kubectl's client-side parsing.
    assert "is invalid" in output or "strict decoding error" in output, output
    assert case.field in output, f"the message does not name {case.field}:\n{output}"
    if case.expect:
        assert case.expect in output, output


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.id for example in EXAMPLES])
def test_examples_pass_the_same_dry_run(
    cluster: DevCluster, crds: None, example: Example, tmp_path: Path
) -> None:
    path = tmp_path / "example.json"
    path.write_text(json.dumps(example.manifest))
    returncode, output = dry_run(cluster, path)
    assert returncode == 0, output
