"""A verdict: a condition of the ModelDeployment's status before it gets its generation and transition
time (status.py adds them). Shared by the modules that judge one part each (status.py, scaling.py)."""

from __future__ import annotations

from dataclasses import dataclass

from modeldeploy.api import ConditionStatus

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


@dataclass(frozen=True)
class Verdict:
    """A condition before it gets its generation and transition time."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    # Someone has to act (a Warning; phase Failed, or Degraded while something still serves).
    failed: bool = False

    @classmethod
    def failure(cls, type: str, reason: str, message: str) -> Verdict:
        """A False condition that someone has to act on."""
        return cls(type, FALSE, reason, message, failed=True)
