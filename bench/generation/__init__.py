"""bench/generation: continuous batching vs per-request generation vs the in-process limit."""
