"""`LightkubeCluster` on a kind whose CRD is not installed: `list` is empty and `get` finds nothing,
instead of a transport error that would fail the reconcile and be retried forever.

The API server answers a path no API serves with a plain-text `404 page not found`, which lightkube does
not decode into an ApiError. Against the real control plane (cluster marker), and against a local HTTP
server that gives that same answer, so the rule is also checked where the control plane is not built."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator

import pytest
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from modeldeploy.kinds import SCALED_OBJECT, SERVICE_MONITOR
from modeldeploy.kube import KubeError, LightkubeCluster
from modeldeploy.settings import FIELD_MANAGER
from modeldeploy_dev.devcluster import DevCluster


class _NoSuchApi(http.server.BaseHTTPRequestHandler):
    """What kube-apiserver's mux answers for a group/version nobody registered; 500 for /broken."""

    def do_GET(self) -> None:
        code, body = (500, b"boom\n") if self.path.startswith("/broken") else (404, b"404 page not found\n")
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def no_such_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _config(server: str) -> KubeConfig:
    return KubeConfig.from_dict(
        {
            "clusters": [{"name": "local", "cluster": {"server": server}}],
            "users": [{"name": "someone", "user": {"token": "unused"}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "someone"}}],
            "current-context": "local",
        }
    )


async def _list_and_get(config: KubeConfig, namespace: str) -> list[object]:
    api = LightkubeCluster(AsyncClient(config=config, field_manager=FIELD_MANAGER))
    try:
        return [
            await api.list(SCALED_OBJECT, namespace, {"a": "b"}),
            await api.list(SERVICE_MONITOR, namespace, {}),
            await api.get(SCALED_OBJECT, namespace, "x"),
        ]
    finally:
        await api.close()


def test_a_missing_kind_lists_empty_on_a_plain_text_404(no_such_api: str) -> None:
    assert asyncio.run(_list_and_get(_config(no_such_api), "models")) == [[], [], None]


def test_any_other_plain_text_answer_is_an_error_with_its_code(no_such_api: str) -> None:
    api = LightkubeCluster(AsyncClient(config=_config(f"{no_such_api}/broken")))
    with pytest.raises(KubeError) as caught:
        asyncio.run(api.list(SCALED_OBJECT, "models", {}))
    assert caught.value.code == 500 and caught.value.transient and "boom" in str(caught.value)


@pytest.mark.cluster
def test_a_missing_kind_lists_empty_on_the_real_api_server(cluster: DevCluster) -> None:
    found = asyncio.run(_list_and_get(KubeConfig.from_file(cluster.kubeconfig), "default"))
    assert found == [[], [], None]
