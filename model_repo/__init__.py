"""Build a Triton Inference Server model repository from a Hugging Face Transformers checkpoint."""

from model_repo.options import DType, ModelFormat, Task

__all__ = ["DType", "ModelFormat", "Task"]
__version__ = "0.1.0"
