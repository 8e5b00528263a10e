"""A row's text as it is written: detokenising, what may be streamed yet, and the stop strings that
end it. Apart from the runners' state machines, which feed it one token at a time
(docs/ARCHITECTURE.md §3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..processor import JanusLikeProcessor


@dataclass
class TextSegment:
    """The text a row writes between two images. It is decoded whole after each token (a BPE merge or
    a multi-byte character can change what earlier tokens read as); special tokens stay in `decoded`,
    where stop strings are looked for (a stop may be a special token), and are left out of the text
    shown to the caller, as `skip_special_tokens=True` does."""

    tokens: list[int] = field(default_factory=list)
    decoded: str = ""
    specials: list[tuple[int, int]] = field(default_factory=list)  # special tokens' spans in `decoded`
    emitted: int = 0  # characters of the shown text already streamed

    def add(self, token: int, processor: JanusLikeProcessor, special_ids: frozenset[int]) -> None:
        self.tokens.append(token)
        text = processor.decode(self.tokens, skip_special_tokens=False)
        if token in special_ids:
            self.specials.append((len(self.decoded), len(text)))
        self.decoded = text

    def stop_at(self, stops: Sequence[str]) -> int:
        """Where the first stop string found begins in `decoded`; -1 when none is there."""
        return min((self.decoded.find(stop) for stop in stops if stop in self.decoded), default=-1)

    def shown(self, end: int | None = None) -> str:
        """`decoded[:end]` without its special tokens."""
        end = len(self.decoded) if end is None else end
        parts, position = [], 0
        for start, stop in self.specials:
            if start >= end:
                break
            parts.append(self.decoded[position:start])
            position = stop
        parts.append(self.decoded[position:end])
        return "".join(parts)

    def delta(self, stops: Sequence[str]) -> str:
        """The shown text not streamed yet that is safe to stream: not a half-decoded character, and
        not the last characters a stop string still forming could cut."""
        hold = max((len(stop) for stop in stops), default=1) - 1
        shown = self.shown()
        if shown.endswith("\ufffd") or len(shown) - hold <= self.emitted:
            return ""
        delta, self.emitted = shown[self.emitted : len(shown) - hold], len(shown) - hold
        return delta

    def close(self, end: int | None = None) -> tuple[str, str]:
        """End the segment (at `end` in `decoded`, where a stop string begins): its whole shown text
        and the part of it not streamed yet. The segment starts over, empty."""
        text = self.shown(end)
        rest = text[self.emitted :]
        self.tokens, self.decoded, self.specials, self.emitted = [], "", [], 0
        return text, rest


def special_ids(processor: JanusLikeProcessor) -> frozenset[int]:
    """Ids that `skip_special_tokens=True` leaves out of decoded text (pad, image tags, …)."""
    tokenizer = processor.tokenizer
    candidates = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return frozenset(i for i in candidates if processor.decode([i], skip_special_tokens=True) == "")
