"""modeldeploy: serve Hugging Face Transformers checkpoints with NVIDIA Triton on Kubernetes."""

__version__ = "0.1.0"
