"""janus_like: one autoregressive decoder that reads and writes text and images (Janus / Chameleon style).

The public names load on first use (PEP 562), so that `import janus_like.cli` or
`import janus_like.modeling` does not pull in the pipeline, the engine or torch before they are needed.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "JanusLikeConfig": "configuration",
    "JanusLikeVQConfig": "configuration",
    "JanusLikeForConditionalGeneration": "modeling",
    "JanusLikeProcessor": "processor",
    "JanusLikeVQModel": "vq",
    "JanusLikePipeline": "pipeline",
    **{
        name: "errors"
        for name in (
            "JanusLikeError",
            "ImageError",
            "DataError",
            "PromptError",
            "SettingsError",
            "CheckpointError",
            "GenerationError",
            "ModelNotAvailableError",
        )
    },
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'janus_like' has no attribute {name!r}")
    value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .configuration import JanusLikeConfig, JanusLikeVQConfig
    from .errors import (
        CheckpointError,
        DataError,
        GenerationError,
        ImageError,
        JanusLikeError,
        ModelNotAvailableError,
        PromptError,
        SettingsError,
    )
    from .modeling import JanusLikeForConditionalGeneration
    from .pipeline import JanusLikePipeline
    from .processor import JanusLikeProcessor
    from .vq import JanusLikeVQModel


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
