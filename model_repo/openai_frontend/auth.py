"""API keys for every route of the sidecar except its health checks.

The keys live in a directory (a mounted Secret volume in the pod: one file per Secret key; each non-empty
line of a file is one API key, so a rotation can add the new key beside the old one, in the same file or a
new one). The directory is re-read at most every `refresh_seconds` (on the next request after that), so
a changed Secret takes effect without a restart once the kubelet has updated the volume
(docs/security.md gives the bound).

Keys are held only as SHA-256 digests, and a presented key is compared with every one of them in constant
time (`hmac.compare_digest` on equal-length digests, no early exit), so neither the answer's content nor
its timing says which keys exist or how close a guess came.

Applied as plain ASGI middleware rather than a FastAPI dependency: it covers every route, including ones
added later and FastAPI's own (docs, 404s), and, unlike Starlette's BaseHTTPMiddleware, it leaves the
request's `receive` channel alone, which the routes watch to notice a client that left.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from .json_body import dumps

logger = logging.getLogger("openai_frontend.auth")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Answered without a key: the kubelet's probes send none.
UNAUTHENTICATED_PATHS = frozenset({"/health/live", "/health/ready"})
# How often the key directory is looked at for changes (a stat per file, no reading unless changed).
DEFAULT_REFRESH_SECONDS = 2.0
# The same words whatever was wrong (no header, another scheme, an unknown key): nothing about the keys.
UNAUTHORIZED_MESSAGE = (
    "invalid or missing API key: send 'Authorization: Bearer <key>' with a key this deployment accepts"
)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def read_keys(directory: Path) -> list[bytes]:
    """Every key in `directory`: each non-empty, stripped line of each regular file not starting with '.'."""
    keys: list[bytes] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        for line in path.read_bytes().splitlines():
            if line.strip():
                keys.append(line.strip())
    return keys


class ApiKeys:
    """The accepted keys, from a directory re-read when it changes (at most every `refresh_seconds`)."""

    def __init__(
        self,
        directory: Path,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._digests: tuple[bytes, ...] = ()
        self._reported = False  # the first read is always logged; later ones when the keys changed
        self._checked_at: float | None = None
        self.refresh()

    @property
    def count(self) -> int:
        return len(self._digests)

    def refresh(self) -> None:
        """Re-read the keys (small files: cheaper than telling whether they changed). With no readable
        directory, accept no key: fail closed."""
        self._checked_at = self._clock()
        try:
            keys = read_keys(self.directory)
        except OSError as exc:
            if self.directory.is_dir():
                # A file swapped out between listing and reading (a Secret update in progress): keep the
                # current keys and read again on the next request.
                self._checked_at = None
                return
            if self._digests or not self._reported:
                logger.warning("cannot read API keys in %s (%s): refusing every request", self.directory, exc)
            self._reported = True
            self._digests = ()
            return
        digests = tuple(_digest(key) for key in keys)
        if digests != self._digests or not self._reported:
            logger.warning(
                "API keys in %s: %d key(s)%s",
                self.directory,
                len(keys),
                "" if keys else ": refusing every request",
            )
        self._reported = True
        self._digests = digests

    def _maybe_refresh(self) -> None:
        if self._checked_at is None or self._clock() - self._checked_at >= self.refresh_seconds:
            self.refresh()

    def accepts(self, presented: bytes) -> bool:
        """Whether `presented` is one of the keys, compared with all of them in constant time."""
        self._maybe_refresh()
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def bearer_token(scope: Scope) -> bytes | None:
    """The key of an `Authorization: Bearer <key>` header, else None."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = bytes(value).strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def openai_error_body(message: str) -> dict[str, Any]:
    """OpenAI's own 401 shape (what its SDK turns into AuthenticationError)."""
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def tei_error_body(message: str) -> dict[str, Any]:
    """Hugging Face TEI's error shape ({"error", "error_type"}), for its routes outside /v1 and /v2."""
    return {"error": message, "error_type": "Unauthorized"}


def error_body_for(path: str) -> dict[str, Any]:
    """The 401 body in the shape of the API the path belongs to."""
    if path.startswith(("/v1/", "/v2/")) or path in ("/v1", "/v2"):
        return openai_error_body(UNAUTHORIZED_MESSAGE)
    return tei_error_body(UNAUTHORIZED_MESSAGE)


class ApiKeyMiddleware:
    """Refuses, with a 401 in the route's API shape, every HTTP request without an accepted key, except
    those to UNAUTHENTICATED_PATHS."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNAUTHENTICATED_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is not None and self.keys.accepts(token):
            await self.app(scope, receive, send)
            return
        body = dumps(error_body_for(str(scope.get("path") or "")))
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"www-authenticate", b'Bearer realm="modeldeploy"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def require_api_keys(app: Any, directory: Path, refresh_seconds: float = DEFAULT_REFRESH_SECONDS) -> ApiKeys:
    """Put every route of the FastAPI/Starlette `app` but its health checks behind the keys in
    `directory`; returns the key set (its `count` says how many were read)."""
    keys = ApiKeys(directory, refresh_seconds)
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    return keys
