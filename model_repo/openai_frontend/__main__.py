"""`python3 -m openai_frontend` (sidecar in the Triton image), or `python -m model_repo.openai_frontend`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_PORT = 9000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="openai_frontend", description="OpenAI-compatible API for one model served by Triton."
    )
    parser.add_argument("--model-repository", type=Path, required=True, help="What the builder wrote.")
    parser.add_argument("--model-id", help="The model id clients send (default: Triton's model name).")
    parser.add_argument("--triton-grpc", default="127.0.0.1:8001", help="Triton's gRPC host:port.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--api-keys-dir",
        type=Path,
        help=(
            "Require 'Authorization: Bearer <key>' on every route but /health/*: each non-empty line of "
            "each file here is a key (a mounted Secret); re-read while running. Default: no keys needed."
        ),
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--routes",
        default="openai,rerank,classify,tei",
        help="Route groups to serve, comma-separated (spec.api): openai, rerank, classify, tei.",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import uvicorn

    from .app import ROUTE_GROUPS, create_app
    from .backend import TritonBackend
    from .model import RepositoryError, ServedModel

    try:
        model = ServedModel.load(args.model_repository, args.model_id)
    except RepositoryError as exc:
        print(f"openai_frontend: error: {exc}", file=sys.stderr)
        return 2
    routes = [group.strip() for group in args.routes.split(",") if group.strip()]
    unknown = sorted(set(routes) - set(ROUTE_GROUPS))
    if unknown:
        print(
            f"openai_frontend: error: unknown route groups {unknown}; known: {sorted(ROUTE_GROUPS)}",
            file=sys.stderr,
        )
        return 2
    app = create_app(model, TritonBackend(args.triton_grpc), routes, api_keys=args.api_keys_dir)
    print(
        f"openai_frontend: serving {model.model_id} ({model.task}, Triton model {model.triton_name}) "
        f"on http://{args.host}:{args.port}/v1 via Triton gRPC {args.triton_grpc}"
        + (f", API keys from {args.api_keys_dir}" if args.api_keys_dir else ", no API key needed"),
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
