"""Generation: one engine for text, images and interleaved output (docs/ARCHITECTURE.md §3).

The engine loads on first use (PEP 562): the CLI reads the settings' limits for its help without torch."""

from importlib import import_module

from .settings import MAX_IMAGES_PER_PROMPT, MAX_INTERLEAVED_IMAGES, GenerationSettings

_LAZY = {
    "GenerationEngine": ".engine",
    "Request": ".engine",
    "Done": ".events",
    "Event": ".events",
    "ImageDone": ".events",
    "ImageProgress": ".events",
    "RowResult": ".events",
    "TextDelta": ".events",
}

__all__ = [
    "GenerationEngine",
    "Request",
    "GenerationSettings",
    "Done",
    "Event",
    "ImageDone",
    "ImageProgress",
    "RowResult",
    "TextDelta",
    "MAX_IMAGES_PER_PROMPT",
    "MAX_INTERLEAVED_IMAGES",
]


def __getattr__(name: str):
    """Import an engine or event name from its module the first time it is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
