"""A minimal Kubernetes API client over urllib, from a kubeconfig: the one the dev cluster, the end-to-end
tests and the control-plane benchmark use to speak to the API directly (no kubectl process per look)."""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

MD_PATH = "/apis/modeldeploy.dev/v1alpha1"
# Where each kind of child lives in the API, for direct requests.
CHILD_PATHS: Mapping[str, str] = {
    "deployments": "/apis/apps/v1",
    "replicasets": "/apis/apps/v1",
    "services": "/api/v1",
    "pods": "/api/v1",
    "persistentvolumeclaims": "/api/v1",
    "events": "/api/v1",
    "jobs": "/apis/batch/v1",
    "horizontalpodautoscalers": "/apis/autoscaling/v2",
    "poddisruptionbudgets": "/apis/policy/v1",
    "networkpolicies": "/apis/networking.k8s.io/v1",
    "endpointslices": "/apis/discovery.k8s.io/v1",
}


class KubeApiError(RuntimeError):
    """The API server answered a request with an unexpected status."""


class KubeApi:
    """A minimal Kubernetes API client over urllib, from a kubeconfig written by the dev cluster."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server: str = cluster["server"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self._ctx = ssl.create_default_context(cadata=ca)
        self._headers: dict[str, str] = {}
        if "client-certificate-data" in user:
            # ssl loads a client certificate only from files; they are read at once and removed.
            with tempfile.TemporaryDirectory(prefix="kubeapi-") as secrets:
                cert, key = Path(secrets) / "client.crt", Path(secrets) / "client.key"
                cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
                key.write_bytes(base64.b64decode(user["client-key-data"]))
                self._ctx.load_cert_chain(str(cert), str(key))
        elif "token" in user:
            self._headers["Authorization"] = f"Bearer {user['token']}"

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the cluster's CA and presents the client certificate, if the kubeconfig has one."""
        return self._ctx

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path, data=data, method=method, headers=dict(self._headers)
        )
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        """The object or list at ``path``; None when it does not exist."""
        status, body = self.request("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise KubeApiError(f"GET {path} failed ({status}): {body}")
        return body

    def items(self, resource: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        query = f"?labelSelector={urllib.parse.quote(selector)}" if selector else ""
        body = self.get(f"{CHILD_PATHS[resource]}/namespaces/{namespace}/{resource}{query}")
        return list(body["items"]) if body else []

    def model_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        body = self.get(f"{MD_PATH}/namespaces/{namespace}/modeldeployments/{name}")
        return dict(body) if body else None

    def model_deployments(self, namespace: str) -> list[dict[str, Any]]:
        body = self.get(f"{MD_PATH}/namespaces/{namespace}/modeldeployments")
        return list(body["items"]) if body else []

    def child(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        body = self.get(f"{CHILD_PATHS[resource]}/namespaces/{namespace}/{resource}/{name}")
        return dict(body) if body else None

    def server_side_apply(self, path: str, obj: Mapping[str, Any], manager: str) -> tuple[int, Any]:
        query = f"?fieldManager={urllib.parse.quote(manager)}&force=true"
        return self.request("PATCH", path + query, obj, content_type="application/apply-patch+yaml")

    def watch(
        self,
        path: str,
        on_event: Callable[[str, dict[str, Any]], None],
        stop: threading.Event,
        *,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
    ) -> None:
        """Calls ``on_event(type, object)`` for every change at the collection ``path`` until ``stop``.

        Runs in the caller's thread; a watch records every intermediate state, which polling can miss.
        """
        params = {"watch": "1", "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "false"}
        if resource_version:
            params["resourceVersion"] = resource_version
        sep = "&" if "?" in path else "?"
        req = urllib.request.Request(
            f"{self.server}{path}{sep}{urllib.parse.urlencode(params)}", headers=dict(self._headers)
        )
        with urllib.request.urlopen(req, context=self._ctx, timeout=timeout_seconds + 10) as resp:
            for line in resp:
                if stop.is_set():
                    return
                if line.strip():
                    event = json.loads(line)
                    on_event(event["type"], event["object"])
