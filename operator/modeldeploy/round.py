"""One reconciliation's working state (`Round`) and its result (`Outcome`): shared by the reconciler and
the steps it delegates to (rollout_steps.py, placed.py), so that those need not import the reconciler."""

from __future__ import annotations

from dataclasses import dataclass, field

from modeldeploy.api import ModelDeployment, ModelDeploymentStatus
from modeldeploy.manifests import DesiredState
from modeldeploy.observations import Observed
from modeldeploy.rollout import Decision
from modeldeploy.settings import ClusterCapabilities


@dataclass
class Outcome:
    """What a reconciliation found; the queue schedules the next run by it (`retry_after`)."""

    invalid_spec: list[str] | None = None
    writes: int = 0
    ready: bool = False
    # Seconds until it is worth trying again (something was refused or is still settling); None: done.
    retry_after: float | None = None
    message: str = ""


@dataclass
class Round:
    """One reconciliation in progress."""

    md: ModelDeployment
    uid: str
    desired: DesiredState
    capabilities: ClusterCapabilities
    observed: Observed
    writes: int = 0
    refused: list[str] = field(default_factory=list)
    # A builder runs (so its progress is worth reading again soon).
    building: bool = False
    # The status this round starts from, and the canary step machine's decision (rollout_steps.py).
    previous: ModelDeploymentStatus | None = None
    rollout: Decision | None = None
