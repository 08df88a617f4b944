"""The JSON bodies the frontend answers with (whole answers and server-sent events), written by orjson.

Why not the standard library's encoder (Starlette's `JSONResponse`): it walked every float of an embedding
as a Python float and took 18% of the sidecar's CPU at 64 clients, one text per request (bench/README.md,
"Session 11"), CPU the pod requests beside the model's. orjson writes numpy arrays itself, and a
float32 as the shortest text that reads back to the same float32, so clients get the same vectors.
Non-finite floats are written as `null` (the standard encoder either refused them with a 500, or wrote
`-Infinity`, which is not JSON).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=OPTIONS)


class JSONAnswer(JSONResponse):
    """Starlette's JSON response, its body written by `dumps`."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
