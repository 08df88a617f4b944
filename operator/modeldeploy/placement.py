"""Which ModelDeployments a ModelServer loads: each placed, in a fixed order, only while the memory its
built repository records fits what the server's capacity has left. Pure: the server reconcile feeds it
what it read and writes what it returns."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from modeldeploy.names import ChildNames

# The Ready=False reason of a ModelDeployment its server has no room for.
DOES_NOT_FIT = "InsufficientServerCapacity"
# The reason of one whose repository is not built yet (its memory is unknown until then).
AWAITING_BUILD = "RepositoryNotBuilt"


@dataclass(frozen=True)
class Candidate:
    name: str  # the ModelDeployment, also the Triton model name
    created: str  # metadata.creationTimestamp: earlier models keep their place
    repository: str | None  # path of its built repository in the cache volume; None until built
    memory_bytes: int | None  # what the repository records (model_repo.memory)

    @property
    def model_name(self) -> str:
        """Its Triton model name (the builder's --model-name for this ModelDeployment)."""
        return ChildNames(self.name).model_name


@dataclass(frozen=True)
class Placement:
    placed: list[Candidate]
    refused: dict[str, tuple[str, str]]  # name → (reason, message)
    capacity_bytes: int

    @property
    def used_bytes(self) -> int:
        return sum(candidate.memory_bytes or 0 for candidate in self.placed)


def gib(value: int) -> str:
    return f"{value / (1 << 30):.2f} GiB"


def place(
    server: str, capacity_bytes: int, candidates: list[Candidate], loaded: Collection[str] = ()
) -> Placement:
    """First come, first placed: the models already listed (`loaded`, Triton model names) keep their
    place, then by creation time and name, so adding a model never evicts another."""
    placed: list[Candidate] = []
    refused: dict[str, tuple[str, str]] = {}
    used = 0
    order = sorted(candidates, key=lambda c: (c.model_name not in loaded, c.created, c.name))
    for candidate in order:
        if candidate.repository is None or candidate.memory_bytes is None:
            refused[candidate.name] = (
                AWAITING_BUILD,
                f"the repository is being built; ModelServer {server} places it once its memory is known",
            )
            continue
        if used + candidate.memory_bytes > capacity_bytes:
            holders = ", ".join(c.name for c in placed) or "none"
            refused[candidate.name] = (
                DOES_NOT_FIT,
                f"ModelServer {server} has capacity {gib(capacity_bytes)}, {gib(used)} used (by {holders}); "
                f"this model needs {gib(candidate.memory_bytes)}: raise the server's spec.capacity, move a "
                "model, or place this one on another server",
            )
            continue
        placed.append(candidate)
        used += candidate.memory_bytes
    return Placement(placed, refused, capacity_bytes)


def desired_models(placement: Placement) -> dict[str, dict[str, dict[str, str]]]:
    """The agent's models.json content (model_repo.model_set.read_desired reads it)."""
    return {
        "models": {
            c.model_name: {"repository": c.repository} for c in placement.placed if c.repository is not None
        }
    }
