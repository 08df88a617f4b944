"""Run the GitOps health checks shipped in examples/gitops/ on a ModelDeployment object.

- Argo CD: the Lua script from argocd-cm-health.yaml, run with Lua 5.1 (lupa's bundled Lua 5.1; Argo CD
  runs gopher-lua, a Lua 5.1 implementation), with `obj` bound to the object as Argo CD binds it.
- Flux: the healthCheckExprs CEL expressions from the models Kustomization, evaluated by a CEL
  implementation (the `common-expression-language` package, not Flux's cel-go) with the object's
  top-level fields as variables, as Flux passes them.

Used by test_gitops.py on sample statuses and by tests/e2e/test_helm_install.py on statuses the
operator wrote in a real cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cel
import yaml
from lupa import lua51

ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "examples" / "gitops"
ARGOCD_HEALTH_KEY = "resource.customizations.health.modeldeploy.dev_ModelDeployment"


def argocd_health_script() -> str:
    config_map = yaml.safe_load((GITOPS / "argocd" / "argocd-cm-health.yaml").read_text())
    script: str = config_map["data"][ARGOCD_HEALTH_KEY]
    return script


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({key: _to_lua(runtime, item) for key, item in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, item) for item in value])
    return value


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would show them for `obj`."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=False)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(argocd_health_script())
    status = result["status"]
    message = result["message"]
    return str(status), "" if message is None else str(message)


def flux_health_exprs() -> dict[str, str]:
    for doc in yaml.safe_load_all((GITOPS / "flux" / "kustomizations.yaml").read_text()):
        for check in (doc or {}).get("spec", {}).get("healthCheckExprs", []):
            if check["kind"] == "ModelDeployment":
                return {
                    key: " ".join(check[key].split())
                    for key in ("current", "failed", "inProgress")
                    if key in check
                }
    raise AssertionError("no healthCheckExprs for ModelDeployment in flux/kustomizations.yaml")


def flux_health(obj: dict[str, Any]) -> str:
    """Current, Failed, InProgress or Error, as Flux's StatusEvaluator (RFC 0009) decides: a
    status.observedGeneration that differs from metadata.generation is InProgress; otherwise the
    inProgress, failed and current expressions are evaluated in that order with the object's top-level
    fields as variables, and the first true one wins; none true is InProgress; an evaluation error (a
    field that does not exist) is an error, which Flux reports."""
    status = obj.get("status") or {}
    generation = obj.get("metadata", {}).get("generation")
    if (
        "observedGeneration" in status
        and generation is not None
        and status["observedGeneration"] != generation
    ):
        return "InProgress"
    expressions = flux_health_exprs()
    for key, result in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if key not in expressions:
            continue
        try:
            value = cel.evaluate(expressions[key], obj)
        except Exception:
            return "Error"
        if value is True:
            return result
    return "InProgress"
