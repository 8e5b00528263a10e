"""janus_like: one autoregressive decoder that reads and writes text and images (Janus / Chameleon style)."""

from transformers import AutoConfig

from .configuration import JanusLikeConfig, JanusLikeVQConfig
from .errors import (CheckpointError, DataError, GenerationError, ImageError, JanusLikeError, ModelNotAvailableError,
                     PromptError, SettingsError)
from .modeling import JanusLikeForConditionalGeneration
from .pipeline import JanusLikePipeline
from .processor import JanusLikeProcessor
from .vq import JanusLikeVQModel

AutoConfig.register(JanusLikeConfig.model_type, JanusLikeConfig, exist_ok=True)
AutoConfig.register(JanusLikeVQConfig.model_type, JanusLikeVQConfig, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "JanusLikeConfig", "JanusLikeVQConfig", "JanusLikeForConditionalGeneration", "JanusLikeProcessor",
    "JanusLikeVQModel", "JanusLikePipeline", "JanusLikeError", "ImageError", "DataError", "PromptError", "SettingsError",
    "CheckpointError", "GenerationError", "ModelNotAvailableError",
]
