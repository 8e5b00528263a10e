"""Generation: one engine for text, images and interleaved output (DESIGN.md §3)."""

from .engine import GenerationEngine, Request
from .events import Done, Event, ImageDone, ImageProgress, RowResult, TextDelta
from .settings import MAX_IMAGES_PER_PROMPT, MAX_INTERLEAVED_IMAGES, GenerationSettings

__all__ = ["GenerationEngine", "Request", "GenerationSettings", "Done", "Event", "ImageDone", "ImageProgress",
           "RowResult", "TextDelta", "MAX_IMAGES_PER_PROMPT", "MAX_INTERLEAVED_IMAGES"]
