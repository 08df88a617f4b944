"""Derived names, the repository digest and the semantic comparison behind zero-write resyncs."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from md_fixtures import md_of

from modeldeploy.compare import is_subset
from modeldeploy.digest import repository_digest
from modeldeploy.names import ChildNames, dns_label, label_value
from modeldeploy.quantity import parse_quantity, plain_number

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
MD_NAMES = [
    "bert",
    "7b-chat",
    "model.v2",
    "a" * 63,
    "a" * 64,
    "x" * 253,
    "a." * 100 + "b",
    "long-name-" * 6 + "end",
]


@pytest.mark.parametrize("md_name", MD_NAMES)
def test_every_derived_name_is_valid(md_name: str) -> None:
    names = ChildNames(md_name)
    for name in (names.deployment, names.service, names.cache_claim, names.build_job("0123456789abcdef")):
        assert len(name) <= 63 and DNS1035.match(name), name
    assert len(names.model_name) <= 63 and LABEL_VALUE.match(names.model_name)
    assert len(label_value(md_name)) <= 63 and LABEL_VALUE.match(label_value(md_name))


def test_plain_names_stay_readable() -> None:
    names = ChildNames("bert")
    assert (names.deployment, names.cache_claim, names.build_job("0123456789abcdef")) == (
        "bert",
        "bert-cache",
        "bert-build-0123456789ab",
    )
    assert label_value("bert") == "bert" and names.model_name == "bert"


def test_names_that_must_be_shortened_stay_distinct() -> None:
    first, second = "a" * 70 + "-one", "a" * 70 + "-two"
    assert dns_label(first) != dns_label(second)
    assert label_value(first) != label_value(second)
    assert dns_label("model.v2") != dns_label("model-v2")


def test_digest_follows_the_repository_inputs_only() -> None:
    base = md_of({})
    digest = repository_digest(base.spec, "bert")
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    same = [
        md_of({"replicas": 5}),
        md_of({"triton": {"image": "other:1"}}),
        md_of({"resources": {"requests": {"cpu": 3}}}),
        md_of({"autoscaling": {"maxReplicas": 3}}),
        md_of({"model": {"credentialsSecret": "token"}}),
        # Spelling a default out is not a change.
        md_of({"triton": {"maxBatchSize": 32, "format": "auto"}}),
        md_of({"model": {"allowNewHead": False}}),
    ]
    for md in same:
        assert repository_digest(md.spec, "bert") == digest
    different = [
        md_of({"model": {"source": "hf://google-bert/bert-large-uncased"}}),
        md_of({"model": {"revision": "abc123"}}),
        md_of({"model": {"task": "fill-mask"}}),
        # A refused build's failed Job must not stand for the opted-in one.
        md_of({"model": {"allowNewHead": True}}),
        md_of({"triton": {"maxBatchSize": 8}}),
        md_of({"triton": {"dynamicBatching": {"maxQueueDelayMicroseconds": 10}}}),
        md_of({"triton": {"responseCache": True}}),
        md_of({"resources": {"gpus": 1}}),
    ]
    digests = {repository_digest(md.spec, "bert") for md in different}
    assert digest not in digests and len(digests) == len(different)
    assert repository_digest(base.spec, "other-name") != digest, "the model name is part of the repository"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        (3, "3"),
        ("1Gi", "1073741824"),
        ("1k", "1000"),
        ("1e3", "1000"),
        ("0.25", "0.25"),
    ],
)
def test_quantities_parse_like_apimachinery(text: str | int, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


def test_plain_numbers_for_keda() -> None:
    assert plain_number("1500m") == "1.5"
    assert plain_number("20k") == "20000"
    with pytest.raises(ValueError):
        parse_quantity("lots")


def test_subset_tolerates_server_defaults_and_canonical_forms() -> None:
    desired = {
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "triton",
                            "resources": {"requests": {"cpu": "1000m", "memory": "1024Mi"}},
                            "ports": [{"name": "http", "containerPort": 8000}],
                        }
                    ]
                }
            },
        }
    }
    live = {
        "metadata": {"uid": "x", "managedFields": []},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {
                "spec": {
                    "dnsPolicy": "ClusterFirst",
                    "containers": [
                        {
                            "name": "triton",
                            "imagePullPolicy": "IfNotPresent",
                            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                            "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                        },
                        {"name": "sidecar-injected-by-a-webhook"},
                    ],
                }
            },
        },
    }
    assert is_subset(desired, live)


def test_subset_notices_drift() -> None:
    desired = {"spec": {"replicas": 2, "args": ["--a", "--b"], "ports": [{"name": "http", "port": 8000}]}}
    assert not is_subset(
        desired, {"spec": {"replicas": 3, "args": ["--a", "--b"], "ports": [{"name": "http", "port": 8000}]}}
    )
    assert not is_subset(
        desired, {"spec": {"replicas": 2, "args": ["--a"], "ports": [{"name": "http", "port": 8000}]}}
    )
    assert not is_subset(
        desired, {"spec": {"replicas": 2, "args": ["--b", "--a"], "ports": [{"name": "http", "port": 8000}]}}
    )
    assert not is_subset(
        desired, {"spec": {"replicas": 2, "args": ["--a", "--b"], "ports": [{"name": "http", "port": 80}]}}
    )
    assert not is_subset(desired, {"spec": {"replicas": 2, "args": ["--a", "--b"], "ports": []}})
    assert not is_subset({"a": True}, {"a": 1}), "booleans are not numbers"
    assert not is_subset({"a": "8000"}, {"a": "http"})
    assert is_subset({"targetPort": 8000}, {"targetPort": "8000"}), "int-or-string forms of one value"
