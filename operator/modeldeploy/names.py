"""Names of the objects derived from a ModelDeployment's name.

A ModelDeployment's name is a DNS-1123 subdomain: up to 253 characters, may start with a digit and may
contain dots. Services (and so, for symmetry, everything else we create) need a DNS-1035 label: at most
63 characters, starting with a letter, no dots. Jobs are limited to 63 characters by their `job-name` pod
label. Every derived name is therefore shortened with a hash of the full name whenever the plain form
would be invalid, so two different ModelDeployments never share a derived name.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
MAX_SUBDOMAIN = 253
HASH_LENGTH = 8
# Kubernetes' name rules (apimachinery's validation): the CRD's schema patterns and the operator's checks.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def is_dns_subdomain(name: str) -> bool:
    """Whether `name` may name a PersistentVolumeClaim, Secret, ConfigMap, ... (a DNS-1123 subdomain)."""
    return len(name) <= MAX_SUBDOMAIN and re.match(DNS1123_SUBDOMAIN, name) is not None


def short_hash(text: str, length: int = HASH_LENGTH) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _trim(text: str, length: int) -> str:
    """`text` cut to `length`, without trailing separators (names and labels must end alphanumeric)."""
    return text[:length].rstrip("-_.")


def dns_label(name: str, suffix: str = "") -> str:
    """A DNS-1035 label (≤ 63) for `name` + `-suffix`, hashed when `name` can't be used as it is."""
    tail = f"-{suffix}" if suffix else ""
    plain = f"{name}{tail}"
    if len(plain) <= MAX_LABEL and re.match(DNS1035_LABEL, plain):
        return plain
    cleaned = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if not cleaned[:1].isalpha():
        cleaned = f"md-{cleaned}"
    marker = f"-{short_hash(name)}{tail}"
    return f"{_trim(cleaned, MAX_LABEL - len(marker))}{marker}"


def label_value(name: str) -> str:
    """`name` as a label value (≤ 63 characters), hashed when it would not fit."""
    if len(name) <= MAX_LABEL and re.match(LABEL_VALUE, name):
        return name
    marker = f"-{short_hash(name)}"
    return f"{_trim(name, MAX_LABEL - len(marker))}{marker}"


def truncated_label_value(name: str) -> str:
    """`name` cut to fit a label value, for the human-facing app.kubernetes.io/instance label."""
    return _trim(name, MAX_LABEL)


class ChildNames:
    """Every name the operator derives from one ModelDeployment name."""

    def __init__(self, md_name: str) -> None:
        self.md_name = md_name
        self.base = dns_label(md_name)
        # The repository builder allows 63 characters of [A-Za-z0-9_.-]; a label value fits that.
        self.model_name = label_value(md_name)
        # A ModelDeployment has at most one object of each of these kinds (and kinds do not share names):
        # each takes the plain name.
        self.deployment = self.service = self.autoscaler = self.base
        self.pod_disruption_budget = self.service_monitor = self.base
        self.network_policy = self.base
        self.cache_claim = dns_label(md_name, "cache")

    def build_job(self, digest: str) -> str:
        return dns_label(self.md_name, f"build-{digest[:12]}")
