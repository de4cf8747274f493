"""Caption backends, one per file, in a plain registry: name -> class."""

from .base import Backend, GenerateOptions, Output, Request
from .transformers_backend import TransformersBackend
from .vllm_backend import VLLMBackend

BACKENDS: dict[str, type[Backend]] = {
    TransformersBackend.name: TransformersBackend,
    VLLMBackend.name: VLLMBackend,
}


def make_backend(name: str, spec, **options) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name](spec, **options)


__all__ = ["BACKENDS", "Backend", "GenerateOptions", "Output", "Request", "make_backend"]
