"""An OpenAI-compatible HTTP API in front of one model served by Triton (docs/openai.md).

It runs as a sidecar in the Triton pod (`python3 -m openai_frontend` in the Triton runtime image) or
next to a local tritonserver (`modeldeploy serve --openai`), and maps `/v1/models`, `/v1/embeddings`,
`/v1/completions` and `/v1/chat/completions` onto the model's Triton I/O contract over gRPC on
localhost. The package imports only its own modules by relative import (never `model_repo` or
`modeldeploy`): the Triton runtime image carries it as a top-level package without the project.
"""
