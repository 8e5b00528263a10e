"""janus_like: one autoregressive decoder that reads and writes text and images (Janus / Chameleon style).

The model classes load on first use (PEP 562), so that `janus-like --help` and the CLI's argument
errors answer without importing torch and transformers."""

from importlib import import_module

from .errors import (CheckpointError, DataError, GenerationError, ImageError, JanusLikeError, ModelNotAvailableError,
                     PromptError, SettingsError)

_LAZY = {
    "JanusLikeConfig": ".configuration", "JanusLikeVQConfig": ".configuration",
    "JanusLikeForConditionalGeneration": ".modeling", "JanusLikePipeline": ".pipeline",
    "JanusLikeProcessor": ".processor", "JanusLikeVQModel": ".vq",
}

__version__ = "0.1.0"
__all__ = [
    "JanusLikeConfig", "JanusLikeVQConfig", "JanusLikeForConditionalGeneration", "JanusLikeProcessor",
    "JanusLikeVQModel", "JanusLikePipeline", "JanusLikeError", "ImageError", "DataError", "PromptError", "SettingsError",
    "CheckpointError", "GenerationError", "ModelNotAvailableError",
]


def __getattr__(name: str):
    """Import a model class from its module the first time it is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
