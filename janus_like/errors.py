"""Errors raised for bad input. Each message says what was wrong and what is accepted."""


def one_line(error: BaseException) -> str:
    """Another library's exception as `Type: message` on one line (torch, safetensors and
    transformers messages often span several), to quote inside one of ours."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def is_int(value) -> bool:
    """An integer setting: True and False are ints in Python, but never a count, size or seed."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A numeric setting: an int or a float, a bool not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class JanusLikeError(Exception):
    """Base class of every error this package raises for a user's input."""


class ImageError(JanusLikeError):
    """An image could not be read or is not usable (corrupt, empty, too large, odd mode)."""


class DataError(JanusLikeError):
    """A training record is malformed (unknown task, missing file, bad field)."""


class PromptError(JanusLikeError):
    """A prompt is empty or does not fit the model's context."""


class SettingsError(JanusLikeError):
    """A generation or training setting is outside its accepted range."""


class GenerationError(JanusLikeError):
    """A generation cannot go on (a later call on the same engine took over its state)."""


class CheckpointError(JanusLikeError):
    """A checkpoint has an unknown layout, missing files or mismatched tensors."""


class ModelNotAvailableError(JanusLikeError):
    """The requested model (for example the embedded default) is not shipped."""
