"""Continuous batching: many requests share the decode steps of one static KV cache.

Slots. The cache has `max_batch` rows ("slots"), allocated once on the first admission and never
reallocated. A request row takes one slot; with guidance it also takes a twin slot (the
unconditional prompt), and an image edit with `image_cfg_scale != 1` a third ("bare": neither text
nor input images). An interleaved row reserves its twin at admission; the twin is prefilled when the
row opens an image, as in `GenerationEngine`.

Columns. Every slot writes its own sequence from column 0: a row's token at position p sits in
column p of its slot, and each step writes every slot at its own column (a cache layer that scatters
one column per slot, `_SlotWrites`). So rows never shift, there is no left padding, and a row admitted
mid-flight starts at column 0 while others are deep in their images. A request is admitted only if its
prompt plus the most it may generate fits the cache's columns (checked when it is submitted), so the
cache never runs out of columns and nothing needs compacting. Attention reads the first `hi` slots
(one past the highest slot in use, rounded up to ROW_BLOCK; slots are handed out lowest first) and
the first columns in use, rounded up to WIDTH_STEP.

Admission and leaving. Between decode steps the scheduler thread admits waiting rows in order while
their slots are free, prefilling each row's prompts (row, twin, bare: one decoder call per row, so a
row's numbers do not depend on what was admitted beside it) into its slots; the other rows' state is
untouched. A row that finishes, or whose stream is closed, leaves before the next step and frees its
slots (twins included).

Randomness. Sampling is Gumbel-max in the exponential-race form (argmax p/E, E ~ Exp(1)), with E
derived from a counter-based hash of (row seed, the row's own step index, vocabulary index) computed
on the device for the whole batch: no generator state, no host sync, and a row's noise does not depend
on its slot or on its neighbours. A call's seed (drawn with `secrets` when not given, and reported in
`RowResult.seed`) gives row j the seed mix(seed, j). Settings are per slot tensors (the text and the
image temperature, top-k/top-p, guidance scales, repetition penalty); budgets, stop strings and
images allowed are per row on the host.
"""

from __future__ import annotations

import atexit
import copy
import queue
import secrets
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer

from ..errors import GenerationError, PromptError, SettingsError
from ..layout import GEN_IMAGE, TEXT, TokenSequence
from ..modeling import JanusLikeForConditionalGeneration
from ..processor import JanusLikeProcessor
from .engine import (
    DONE_MODE,
    IMAGE_MODE,
    TEXT_MODE,
    WIDTH_STEP,
    Decoder,
    Request,
    _additive,
    _copy,
    _fill,
    _preview_due,
    check_room,
    decode_images,
    embed_fed,
    left_padded,
)
from .events import Done, Event, ImageDone, ImageProgress, RowResult, TextDelta
from .sampling import plausible
from .settings import GenerationSettings
from .text import TextSegment, special_ids

# A step computes the slots up to the highest in use rounded up to a multiple of this: CPU matrix
# kernels sum a batch of 1-3, 5-7 or 9-11 rows in another order than one of 4, 8 or 12 and more (seen
# on AMD EPYC, torch 2.13 and 2.14), and a seeded row must see the same numbers alone (2 slots with
# its twin) as beside others (docs/serving.md, "Per-row seeds"). Decode steps read every weight
# once whatever the rows, so a few more rows cost little.
ROW_BLOCK = 4
MAX_BATCH = 4096  # slots: far beyond any cache that fits a device, small enough to refuse typos
IDLE_SECONDS = 1.0  # the scheduler thread ends after this long with nothing to do (the next submit starts one)
# cache columns by default, when the model's context is longer: Janus-Pro's 16384 × 32 rows would take
# 100 GB at 1B; 4096 holds an image (576 codes) or an interleaved answer with four images and a long prompt
DEFAULT_CACHE_LENGTH = 4096
_END = object()  # the last item of a call's event queue
_SCHEDULERS: weakref.WeakSet = weakref.WeakSet()  # stopped at exit, before daemon threads are cut off mid-op
# Every loop thread, joined at exit too: one that holds the last reference to its scheduler frees the
# scheduler's tensors as it ends, and a tensor freed during interpreter shutdown aborts the process
# (`terminate called without an active exception`); by then the scheduler has left _SCHEDULERS.
_LOOP_THREADS: weakref.WeakSet = weakref.WeakSet()


# ---------------------------------------------------------------------- counter-based noise

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 value torch stores."""
    x &= _MASK64
    return x - (1 << 64) if x >> 63 else x


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps as on uint64)."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def row_seed(seed: int, row: int) -> int:
    """The seed of row `row` of a call seeded `seed` (splitmix64 of both, on the host)."""
    z = (seed + (row + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return _signed(z ^ (z >> 31))


def exponential_noise(seeds: torch.Tensor, steps: torch.Tensor, index_hash: torch.Tensor) -> torch.Tensor:
    """(rows, vocab) Exp(1) draws that depend only on each row's seed and step and the vocabulary
    index (`index_hash` = _mix of the indices), in a few elementwise ops on the device."""
    key = _mix(seeds + steps * _GOLDEN)
    bits = _mix(key[:, None] ^ index_hash[None, :])
    uniform = (_shr(bits, 40).float() + 0.5) * 2.0**-24  # 24 bits: exact in float32, never 0 or 1
    return -torch.log(uniform)


# ---------------------------------------------------------------------- sampling per row


def filter_rows(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per-row top-k (0: off) and top-p (1: off); -inf outside, as `sampling.filter_top_k_top_p`."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    vocab = logits.shape[-1]
    kth = sorted_logits.gather(-1, (top_k.clamp(1, vocab) - 1)[:, None])
    logits = logits.masked_fill((logits < kth) & (top_k > 0)[:, None], float("-inf"))
    sorted_logits = logits.gather(-1, order)  # the order is unchanged by masking the smallest
    probs = sorted_logits.softmax(-1)
    drop_sorted = (probs.cumsum(-1) - probs >= top_p[:, None]) & (top_p < 1)[:, None]
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    noise: torch.Tensor | None,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """(rows, vocab) -> (rows,) ids: argmax where the row's temperature is 0, else Gumbel-max with `noise`."""
    greedy = logits.argmax(dim=-1)
    if noise is None:
        return greedy
    scaled = logits / torch.where(temperature > 0, temperature, 1.0)[:, None]
    if top_k is not None:
        scaled = filter_rows(scaled, top_k, top_p)
    drawn = (scaled.softmax(dim=-1) / noise).argmax(dim=-1)
    return torch.where(temperature > 0, drawn, greedy)


# ---------------------------------------------------------------------- state


@dataclass(eq=False)
class _Call:
    """One `submit`: its rows' results, the queue its stream reads, whether it was cancelled."""

    settings: GenerationSettings
    seed: int
    results: list[RowResult]
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    remaining: int = 0
    cancelled: bool = False
    over: bool = False


@dataclass(eq=False)
class _Waiting:
    """A row waiting for admission: its request and how many slots it needs."""

    call: _Call
    index: int
    request: Request
    guided: bool  # needs a twin slot
    bare: bool  # needs a slot without text or input images (image guidance)

    @property
    def slots(self) -> int:
        return 1 + self.guided + self.bare


@dataclass(eq=False)
class RowState:
    """Everything one admitted row carries from step to step (created at admission)."""

    call: _Call
    index: int  # the row's index in its call (events carry it)
    settings: GenerationSettings
    slot: int
    twin: int | None  # its twin's slot (guidance), None without
    bare: int | None  # its bare slot (image guidance), None without
    mode: str
    prompt: TokenSequence
    context: TokenSequence | None  # everything a text row has seen, for its twin's prompt
    fed: tuple[int, bool] = (0, False)  # the token this row is fed next, and whether it is an image code
    columns: dict[int, int] = field(default_factory=dict)  # slot -> next column written there
    fed_slots: list[int] = field(default_factory=list)  # slots fed this row's token each step
    step: int = 0  # tokens sampled so far: the noise counter
    text: TextSegment = field(default_factory=TextSegment)  # the text written since the last image
    forced: int | None = None
    codes: list[int] = field(default_factory=list)  # the current image's codes read back so far
    unread: int = 0  # codes sampled since, still only on the device (`Scheduler._codes`)
    text_tokens: int = 0
    draw_only: bool = False

    @property
    def result(self) -> RowResult:
        return self.call.results[self.index]

    @property
    def slots(self) -> list[int]:
        return [s for s in (self.slot, self.twin, self.bare) if s is not None]


class RequestStream:
    """The events of one call, in order; `close()` (or dropping it) cancels the call's rows."""

    def __init__(self, scheduler: Scheduler, call: _Call):
        self._scheduler, self._call, self._finished = scheduler, call, False

    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> Event:
        if self._finished:
            raise StopIteration
        item = self._call.events.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item

    @property
    def seed(self) -> int:
        """The call's seed (drawn when none was given)."""
        return self._call.seed

    def close(self) -> None:
        """Cancel what is left of the call; its slots are free before the next decode step."""
        self._finished = True
        self._scheduler.cancel(self._call)

    def __del__(self) -> None:
        self.close()


class _SlotWrites(StaticLayer):
    """The first rows and columns of one cache layer, written at each slot's own column."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor):
        super().__init__(max_cache_len=keys.shape[2])
        self.keys, self.values, self.rows, self.columns = keys, values, rows, columns
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys[self.rows, :, self.columns] = key_states[:, :, -1]
        self.values[self.rows, :, self.columns] = value_states[:, :, -1]
        return self.keys, self.values


# ---------------------------------------------------------------------- the scheduler


class Scheduler:
    """Runs the decode loop on a background thread while any row is active; `submit` is thread-safe."""

    def __init__(
        self,
        model: JanusLikeForConditionalGeneration,
        processor: JanusLikeProcessor,
        max_batch: int = 32,
        cache_length: int | None = None,
        decode: bool = True,
    ):
        """`max_batch`: cache rows in all; `cache_length`: cache columns, the most one row's prompt and
        output may take (default: the model's context, at most DEFAULT_CACHE_LENGTH)."""
        self.context = model.config.text_config.max_position_embeddings
        self.max_batch = check_max_batch(max_batch)
        self.cache_length = min(DEFAULT_CACHE_LENGTH if cache_length is None else int(cache_length), self.context)
        self.model, self.processor, self.decode = model.eval(), processor, decode
        self._decoder = Decoder(model)
        self._special_ids = special_ids(processor)
        self._lock = threading.Condition()
        self._waiting: deque[_Waiting] = deque()
        self._owners: list[RowState | None] = [None] * self.max_batch  # slot -> the row using it
        self._rows: list[RowState] = []  # admitted rows, oldest first
        self._thread: threading.Thread | None = None
        self.cache: StaticCache | None = None  # allocated on the first admission, then reused
        self.steps = 0  # decode steps run so far
        self._stopping = False
        self._init_slot_settings()
        _SCHEDULERS.add(self)

    def _init_slot_settings(self) -> None:
        """Per-slot tensors of the sampling settings, set at admission."""
        n, device = self.max_batch, self.model.device
        self._seeds = torch.zeros(n, dtype=torch.long, device=device)
        self._temperature = torch.zeros(n, device=device)
        self._code_temperature = torch.zeros(n, device=device)
        self._top_k = torch.zeros(n, dtype=torch.long, device=device)
        self._top_p = torch.ones(n, device=device)
        self._cfg = torch.ones(n, device=device)
        self._image_cfg = torch.ones(n, device=device)
        self._plausibility = torch.zeros(n, device=device)
        self._penalty = torch.ones(n, device=device)
        self._twin_of = torch.arange(n, device=device)
        self._bare_of = torch.arange(n, device=device)
        self._two_scale = torch.zeros(n, dtype=torch.bool, device=device)
        text_vocab = self.model.get_output_embeddings().weight.shape[0]
        codebook = self.model.gen_embed.num_embeddings
        self._seen = torch.zeros(n, text_vocab, dtype=torch.bool, device=device)
        self._index_hash = _mix((torch.arange(max(text_vocab, codebook), device=device) + 1) * _GOLDEN)
        self._hidden: torch.Tensor | None = None
        self._codes = torch.zeros(n, self.processor.num_gen_tokens, dtype=torch.long, device=device)  # unread codes

    # ------------------------------------------------------------------ public

    def submit(self, requests: Sequence[Request], settings: GenerationSettings) -> RequestStream:
        """Queue a call's rows (checked here, so bad input raises at once) and return its events."""
        waiting = self._plan(requests, settings)
        seed = settings.seed if settings.seed is not None else secrets.randbits(63)
        call = _Call(settings, seed, [RowResult(seed=seed) for _ in requests], remaining=len(requests))
        with self._lock:
            for w in waiting:
                w.call = call
                self._waiting.append(w)
            self._start()
            self._lock.notify_all()
        return RequestStream(self, call)

    def cancel(self, call: _Call) -> None:
        """Mark a call cancelled; the scheduler thread frees its slots before its next step."""
        with self._lock:
            if not call.over:
                call.cancelled = True
                self._lock.notify_all()

    @property
    def free_slots(self) -> int:
        with self._lock:
            return sum(owner is None for owner in self._owners)

    @property
    def waiting(self) -> int:
        """Rows waiting for slots."""
        with self._lock:
            return len(self._waiting)

    @property
    def active(self) -> int:
        """Rows admitted and generating."""
        with self._lock:
            return len(self._rows)

    # ------------------------------------------------------------------ checks

    def _plan(self, requests: Sequence[Request], settings: GenerationSettings) -> list[_Waiting]:
        """The rows of a call with their slot needs; refuses what can never run."""
        if not requests:
            raise PromptError("nothing to generate: no prompts were given")
        if any(r.start not in (TEXT_MODE, IMAGE_MODE) for r in requests):
            raise SettingsError(f"a request starts in {TEXT_MODE!r} or {IMAGE_MODE!r}")
        any_text = any(r.start == TEXT_MODE for r in requests)
        image_guided = settings.image_guided and any(r.start == IMAGE_MODE and r.prompt.und_pixels for r in requests)
        if image_guided and any_text:
            raise SettingsError(
                f"image_cfg_scale={settings.image_cfg_scale!r} applies to drawing from input images "
                "(text-to-image rows); text and interleaved rows need image_cfg_scale=1"
            )
        waiting = []
        for i, r in enumerate(requests):
            if len(r.prompt) == 0:
                raise PromptError("the prompt is empty; give some text")
            holder = "the model's context" if self.cache_length == self.context else "the scheduler's cache_length"
            check_room(self.processor, self.cache_length, r, self._budget(r, settings), settings, holder)
            draws = r.start == IMAGE_MODE or settings.max_images > 0
            bare = image_guided and r.start == IMAGE_MODE
            waiting.append(_Waiting(None, i, r, guided=(settings.guided or bare) and draws, bare=bare))
        most = max(w.slots for w in waiting)
        if most > self.max_batch:
            raise SettingsError(
                f"a row of this request needs {most} cache slots (itself, its guidance twin"
                f"{' and its imageless twin' if most == 3 else ''}) but max_batch={self.max_batch}; "
                f"use max_batch >= {most} or turn guidance off (cfg_scale=1, image_cfg_scale=1)"
            )
        return waiting

    def _budget(self, request: Request, settings: GenerationSettings) -> int:
        """Tokens a row may feed back: an image's codes, or text plus its images' codes and ends."""
        n_codes = self.processor.num_gen_tokens
        if request.start == IMAGE_MODE:
            return n_codes
        return settings.max_new_tokens + settings.max_images * (n_codes + 1)

    # ------------------------------------------------------------------ the loop

    def _start(self) -> None:
        """Start the scheduler thread unless it runs (lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="janus-like-scheduler", daemon=True)
            _LOOP_THREADS.add(self._thread)
            self._thread.start()

    @torch.inference_mode()
    def _run(self) -> None:
        """Admit, step, repeat; sleep while nothing is admitted or waiting, and end after IDLE_SECONDS
        of that (so that an unused pipeline holds no thread that keeps it alive)."""
        while True:
            with self._lock:
                self._drop_cancelled()
                if not self._rows and not self._waiting and not self._stopping:
                    self._lock.wait(IDLE_SECONDS)
                    self._drop_cancelled()
                if self._stopping or (not self._rows and not self._waiting):
                    self._thread = None
                    return
                admitted = self._reserve()
            for row in admitted:
                self._guarded([row.call], self._admit, row)
            if self._rows:
                self._guarded({row.call: None for row in self._rows}, self._step)

    def stop(self) -> None:
        """End the scheduler thread after its current step (at interpreter exit); a later submit restarts it."""
        with self._lock:
            thread, self._stopping = self._thread, True
            self._lock.notify_all()
        if thread is not None:
            thread.join(timeout=10)
        with self._lock:
            self._stopping = False
            for call in {row.call for row in self._rows} | {w.call for w in self._waiting}:
                self._end(call, GenerationError("the scheduler was stopped (the process is exiting)"))

    def _guarded(self, calls, fn, *args) -> None:
        """Run `fn`; an error ends the calls it concerns (raised in their streams), not the loop."""
        try:
            fn(*args)
        except Exception as error:  # noqa: BLE001 - handed to the callers, whatever it is
            with self._lock:
                for call in calls:
                    self._end(call, error)

    def _drop_cancelled(self) -> None:
        """Free the slots of cancelled calls and forget their waiting rows (lock held)."""
        for call in {row.call for row in self._rows} | {w.call for w in self._waiting}:
            if call.cancelled:
                self._end(call, None)

    def _end(self, call: _Call, error: BaseException | None) -> None:
        """Remove a call's rows (freeing their slots) and close its stream (lock held)."""
        self._waiting = deque(w for w in self._waiting if w.call is not call)
        for row in [r for r in self._rows if r.call is call]:
            self._free(row)
        if not call.over:
            call.over = True
            if error is not None:
                call.events.put(error)
            call.events.put(_END)

    def _free(self, row: RowState) -> None:
        self._rows.remove(row)
        for slot in row.slots:
            self._owners[slot] = None
        self._twin_of[row.slot], self._bare_of[row.slot], self._two_scale[row.slot] = row.slot, row.slot, False

    def _reserve(self) -> list[RowState]:
        """Take waiting rows, oldest first, while their slots are free (lock held)."""
        admitted = []
        while self._waiting:
            w = self._waiting[0]
            free = [s for s, owner in enumerate(self._owners) if owner is None]
            if len(free) < w.slots:
                break
            self._waiting.popleft()
            slot, twin, bare = free[0], free[1] if w.guided else None, free[1 + w.guided] if w.bare else None
            row = RowState(
                w.call,
                w.index,
                w.call.settings,
                slot,
                twin,
                bare,
                mode=w.request.start,
                prompt=w.request.prompt,
                context=_copy(w.request.prompt) if w.request.start == TEXT_MODE else None,
                draw_only=w.request.start == IMAGE_MODE,
            )
            for s in row.slots:
                self._owners[s] = row
            self._rows.append(row)
            admitted.append(row)
        return admitted

    # ------------------------------------------------------------------ admission

    def _admit(self, row: RowState) -> None:
        """Prefill a row's prompts into its slots and set its slots' settings."""
        p, prompt = self.processor, row.prompt
        prompts = {row.slot: prompt}
        if row.twin is not None and row.mode == IMAGE_MODE:
            prompts[row.twin] = p.unconditional(prompt, keep_images=True)
        if row.bare is not None:
            prompts[row.bare] = p.unconditional(prompt)
        self._prefill(prompts)
        row.columns = {slot: len(s) for slot, s in prompts.items()}
        row.fed_slots = list(prompts)
        s, slot = row.settings, row.slot
        self._seeds[slot] = row_seed(row.call.seed, row.index)
        self._temperature[slot] = s.temperature
        self._code_temperature[slot] = s.code_temperature
        self._top_k[slot] = s.top_k or 0
        self._top_p[slot] = 1.0 if s.top_p is None else s.top_p
        self._cfg[slot] = s.cfg_scale if row.twin is not None else 1.0
        self._image_cfg[slot] = s.image_cfg_scale if row.bare is not None else 1.0
        self._plausibility[slot] = s.cfg_plausibility
        self._penalty[slot] = s.repetition_penalty
        self._twin_of[slot] = slot if row.twin is None else row.twin
        self._bare_of[slot] = slot if row.bare is None else row.bare
        self._two_scale[slot] = row.bare is not None
        self._seen[slot] = False
        if s.repetition_penalty != 1.0:
            self._seen[slot, [t for t, m in zip(prompt.ids, prompt.modality) if m == TEXT]] = True

    def _prefill(self, prompts: dict[int, TokenSequence]) -> None:
        """Run the prompts (left-padded to the longest) in one decoder call and copy each one's keys
        and values into columns [0, len) of its slot; its last hidden state becomes the slot's."""
        seqs = list(prompts.values())
        length = max(len(s) for s in seqs)
        inputs = left_padded(self.model, self.processor.pad_id, seqs, length, self._decoder.window)
        temp = DynamicCache(config=self._decoder.cache_config)
        hidden = self._decoder(
            inputs.embeds, inputs.positions, self._decoder.layer_masks(inputs.mask, inputs.windowed), temp
        )
        self._allocate(temp, hidden)
        for i, (slot, s) in enumerate(prompts.items()):
            for static, dynamic in zip(self.cache.layers, temp.layers):
                static.keys[slot, :, : len(s)] = dynamic.keys[i, :, length - len(s) :]
                static.values[slot, :, : len(s)] = dynamic.values[i, :, length - len(s) :]
            self._hidden[slot] = hidden[i, -1]

    def _allocate(self, like: DynamicCache, hidden: torch.Tensor) -> None:
        """The one static cache (max_batch × cache_length), shaped like a prefill's cache; once."""
        if self.cache is not None:
            return
        self.cache = StaticCache(config=self._decoder.cache_config, max_cache_len=self.cache_length)
        empty = lambda t: t.new_zeros(self.max_batch, t.shape[1], 0, t.shape[-1])
        for static, dynamic in zip(self.cache.layers, like.layers):
            static.lazy_initialization(empty(dynamic.keys), empty(dynamic.values))
        self._hidden = hidden.new_zeros(self.max_batch, hidden.shape[-1])

    def _prefill_twin(self, row: RowState) -> None:
        """A text row opened an image: its twin's unconditional prompt for everything the row has
        seen (less the `<begin_of_image>`, which the next step feeds) goes to columns [0, n)."""
        twin = self.processor.unconditional(row.context, keep_images=True)
        n, device = len(twin) - 1, self.model.device
        ids = torch.tensor([twin.ids[:n]], device=device)
        modality = torch.tensor([twin.modality[:n]], device=device)
        pixels = torch.stack(twin.und_pixels).to(device) if twin.und_pixels else None
        temp = DynamicCache(config=self._decoder.cache_config)
        self._decoder(self.model.embed_inputs(ids, modality, pixels), torch.arange(n, device=device)[None], None, temp)
        for static, dynamic in zip(self.cache.layers, temp.layers):
            static.keys[row.twin, :, :n] = dynamic.keys[0]
            static.values[row.twin, :, :n] = dynamic.values[0]
        row.columns[row.twin] = n
        row.fed_slots.append(row.twin)

    # ------------------------------------------------------------------ one step

    def _step(self) -> None:
        """Sample a token for every row, apply it to the rows' states, feed what they take next."""
        rows = list(self._rows)
        width = self._width(rows)
        sampled = self._sample(rows, width)
        if self._blind(rows):
            self._draw_unread(rows, sampled)
            self.steps += 1
            return
        self._read_codes(rows)
        tokens = sampled.tolist()
        events: dict[_Call, list] = {}
        finished_images: list[tuple[RowState, ImageDone]] = []
        for row in rows:
            events.setdefault(row.call, []).extend(self._advance(row, tokens[row.slot], finished_images))
            row.step += 1
        self._finish_images(finished_images)
        with self._lock:
            for call, evs in events.items():
                if not call.over:
                    for event in evs:
                        call.events.put(event)
            for row in rows:
                if row.mode == DONE_MODE and row in self._rows:
                    self._free(row)
                    row.call.remaining -= 1
                    if row.call.remaining == 0 and not row.call.over:
                        row.call.events.put(Done(row.call.results))
                        self._end(row.call, None)
        self._feed([row for row in rows if row.mode != DONE_MODE and row in self._rows])
        self.steps += 1

    def _width(self, rows: list[RowState]) -> int:
        """Slots a step computes: one past the highest in use, rounded up to ROW_BLOCK (a slot above
        the highest in use holds no row: what it computes is never read)."""
        top = 1 + max(s for row in rows for s in row.slots)
        return min(self.max_batch, -(-top // ROW_BLOCK) * ROW_BLOCK)

    def _blind(self, rows: list[RowState]) -> bool:
        """Whether the host can do without this step's tokens: every row is drawing, and none
        finishes its image or shows a preview now."""
        n_codes = self.processor.num_gen_tokens
        for row in rows:
            done = len(row.codes) + row.unread + 1
            if row.mode != IMAGE_MODE or done == n_codes or _preview_due(done, row.settings, n_codes):
                return False
        return True

    def _draw_unread(self, rows: list[RowState], sampled: torch.Tensor) -> None:
        """A drawing step without reading the codes back: they stay in `_codes` on the device and
        are fed from there; the callers get their progress events."""
        n_codes, device = self.processor.num_gen_tokens, self.model.device
        slots = [row.slot for row in rows]
        indices = [len(row.codes) + row.unread for row in rows]
        slots_t, indices_t = _to_device(slots, device), _to_device(indices, device)
        self._codes[slots_t, indices_t] = sampled[slots_t]
        with self._lock:
            for row, done in zip(rows, indices):
                row.unread, row.step = row.unread + 1, row.step + 1
                if not row.call.over:
                    row.call.events.put(ImageProgress(row.index, len(row.result.codes), done + 1, n_codes))
        self._feed(rows, sampled)

    def _read_codes(self, rows: list[RowState]) -> None:
        """Bring the codes of earlier drawing steps to the host: one read for all rows."""
        unread = [row for row in rows if row.unread]
        if not unread:
            return
        codes = self._codes.tolist()
        for row in unread:
            new = codes[row.slot][len(row.codes) : len(row.codes) + row.unread]
            row.codes += new
            row.result.token_ids.extend(new)
            if row.context is not None:
                row.context.add(new, GEN_IMAGE, False)
            row.unread = 0

    def _sample(self, rows: list[RowState], width: int) -> torch.Tensor:
        """Next token of every slot below `width`: image rows from the guided image head, text rows
        from the text head; one tensor, read back once per step."""
        device = self.model.device
        hidden = self._hidden[:width]
        modes = {row.mode for row in rows}
        steps = [0] * width
        is_image, blocked = [False] * width, [True] * width
        for row in rows:
            steps[row.slot] = row.step
            is_image[row.slot] = row.mode == IMAGE_MODE
            blocked[row.slot] = len(row.result.codes) >= row.settings.max_images
        steps = _to_device(steps, device)
        filtered = any(row.settings.top_k or row.settings.top_p is not None for row in rows)
        picks = {"top_k": self._top_k[:width] if filtered else None, "top_p": self._top_p[:width]}
        code = text = None
        if IMAGE_MODE in modes:
            two_scale = any(row.bare is not None for row in rows)
            cond = self.model.image_logits(hidden).float()
            logits = self._guide(cond, width, two_scale)
            if any(row.settings.cfg_plausibility > 0 for row in rows):
                logits = plausible(logits, cond, self._plausibility[:width, None])
            sampled = any(row.settings.code_temperature > 0 for row in rows)
            noise = self._noise(steps, logits.shape[-1], width) if sampled else None
            code = sample_rows(logits, self._code_temperature[:width], noise, **picks)
        if TEXT_MODE in modes:
            logits = self.model.text_logits(hidden).float()
            if any(row.settings.repetition_penalty != 1.0 for row in rows):
                penalty = self._penalty[:width, None]
                penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
                logits = torch.where(self._seen[:width], penalized, logits)
            boi = self.processor.image_start_id
            logits[:, boi] = logits[:, boi].masked_fill(_to_device(blocked, device), float("-inf"))
            sampled = any(row.settings.temperature > 0 for row in rows)
            noise = self._noise(steps, logits.shape[-1], width) if sampled else None
            text = sample_rows(logits, self._temperature[:width], noise, **picks)
        if code is None or text is None:
            return code if text is None else text
        return torch.where(_to_device(is_image, device), code, text)

    def _guide(self, logits: torch.Tensor, width: int, two_scale: bool) -> torch.Tensor:
        """Per-slot guidance: `u + s·(c − u)` with the slot's twin (s = 1 without one: the row's own
        logits), or, where a slot has a bare twin (`two_scale`: some slot has), the two-scale form."""
        twin, cfg = logits[self._twin_of[:width]], self._cfg[:width, None]
        guided = torch.lerp(twin, logits, cfg)
        if two_scale:
            bare = logits[self._bare_of[:width]]
            both = torch.lerp(bare, twin, self._image_cfg[:width, None]) + cfg * (logits - twin)
            guided = torch.where(self._two_scale[:width, None], both, guided)
        return guided

    def _noise(self, steps: torch.Tensor, vocab: int, width: int) -> torch.Tensor:
        return exponential_noise(self._seeds[:width], steps, self._index_hash[:vocab])

    def _feed(self, rows: list[RowState], sampled: torch.Tensor | None = None) -> None:
        """One decoder call: every row's fed token (and its twins') at each slot's own column; the
        tokens are the rows' `fed` on the host, or, given `sampled` (a drawing step nothing read
        back), each row's sampled code."""
        if not rows:
            return
        width = self._width(rows)
        fed, is_code, columns = [self.processor.pad_id] * width, [False] * width, [0] * width
        feeder = list(range(width))  # the slot whose sampled code each slot is fed
        seen = []
        for row in rows:
            token, code = row.fed if sampled is None else (0, True)
            for slot in row.fed_slots:
                fed[slot], is_code[slot], columns[slot], feeder[slot] = token, code, row.columns[slot], row.slot
                row.columns[slot] += 1
            if not code and row.settings.repetition_penalty != 1.0:
                seen.append((row.slot, token))
        device = self.model.device
        if seen:
            slots, ids = zip(*seen)
            self._seen[list(slots), list(ids)] = True
        code_t, columns_t = _to_device(is_code, device), _to_device(columns, device)
        if sampled is None:
            fed_t = _to_device(fed, device)
        else:  # a slot no row feeds (freed below one still drawing) gets the pad, not the code sampled for it
            fed_t = torch.where(code_t, sampled[_to_device(feeder, device)], self.processor.pad_id)
        embeds = self._embed(fed_t, code_t, any(is_code))
        span = min(self.cache_length, -(-(max(columns) + 1) // WIDTH_STEP) * WIDTH_STEP)
        cache = copy.copy(self.cache)
        rows = torch.arange(width, device=device)
        cache.layers = [
            _SlotWrites(layer.keys[:width, :, :span], layer.values[:width, :, :span], rows, columns_t)
            for layer in self.cache.layers
        ]
        where = torch.arange(span, device=device)[None, :]
        allowed = where <= columns_t[:, None]
        windowed = None
        if self._decoder.window is not None:
            windowed = _additive(
                (allowed & (where > columns_t[:, None] - self._decoder.window))[:, None, None], embeds.dtype
            )
        masks = self._decoder.layer_masks(_additive(allowed[:, None, None], embeds.dtype), windowed)
        self._hidden[:width] = self._decoder(embeds[:, None], columns_t[:, None], masks, cache)[:, -1]

    def _embed(self, tokens: torch.Tensor, is_code: torch.Tensor, any_code: bool) -> torch.Tensor:
        return embed_fed(self.model, tokens, is_code, any_code)

    # ------------------------------------------------------------------ row state machine

    def _advance(self, row: RowState, token: int, finished: list) -> list[Event]:
        """Apply one sampled token to a row; set `row.fed` to (token fed next, is it a code)."""
        p, s, n_codes, i = self.processor, row.settings, self.processor.num_gen_tokens, row.index
        result, events = row.result, []
        if row.forced is not None:  # <end_of_image> after the last code: the sample is not used
            token, row.forced = row.forced, None
            row.fed = (token, False)
            result.token_ids.append(token)
            row.context.add([token], TEXT, False)
            if row.twin is not None and row.twin in row.fed_slots:
                row.fed_slots.remove(row.twin)  # the twin rests until the next image re-prefills it
            if row.text_tokens >= s.max_new_tokens:
                row.mode, result.finish_reason = DONE_MODE, "length"
            return events
        result.token_ids.append(token)
        if row.mode == IMAGE_MODE:
            row.fed = (token, True)
            row.codes.append(token)
            if row.context is not None:
                row.context.add([token], GEN_IMAGE, False)
            index, done = len(result.codes), len(row.codes)
            preview = self._preview(row.codes) if _preview_due(done, s, n_codes) else None
            events.append(ImageProgress(i, index, done, n_codes, preview))
            if done == n_codes:
                event = ImageDone(i, index, None, torch.tensor(row.codes))
                events.append(event)
                finished.append((row, event))
                row.codes = []
                if row.draw_only:
                    row.mode, result.finish_reason = DONE_MODE, "image"
                else:
                    row.mode, row.forced = TEXT_MODE, p.image_end_id
            return events
        row.fed = (token, False)
        row.text_tokens += 1
        if token == p.eos_id and not s.ignore_eos:
            events += self._close_text(row)
            row.mode, result.finish_reason = DONE_MODE, "eos"
            return events
        if token == p.image_start_id and len(result.codes) < s.max_images:
            events += self._close_text(row)
            row.context.add([token], TEXT, False)
            row.mode = IMAGE_MODE
            if row.twin is not None:
                self._prefill_twin(row)
            return events
        row.context.add([token], TEXT, False)
        row.text.add(token, p, self._special_ids)
        hit = row.text.stop_at(s.stop)
        if hit >= 0:
            events += self._close_text(row, hit)
            row.mode, result.finish_reason = DONE_MODE, "stop"
        elif row.text_tokens >= s.max_new_tokens:
            events += self._close_text(row)
            row.mode, result.finish_reason = DONE_MODE, "length"
        elif delta := row.text.delta(s.stop):
            events.append(TextDelta(i, delta))
        return events

    def _close_text(self, row: RowState, end: int | None = None) -> list[Event]:
        """End the current text segment (at a stop string beginning at `end`): stream what is left of
        it and add it to the parts."""
        text, rest = row.text.close(end)
        if text:
            row.result.parts.append(text)
        return [TextDelta(row.index, rest)] if rest else []

    # ------------------------------------------------------------------ images

    def _finish_images(self, finished: list[tuple[RowState, ImageDone]]) -> None:
        """Decode the images finished in this step, each in a VQ decoder call of its own (a batch of
        several is convolved in another summation order than one image alone, seen on CPU, and an
        image must not depend on what finished beside it), and add them to their rows' results."""
        images = [image for _, event in finished for image in self._decode(event.codes[None])]
        for (row, event), image in zip(finished, images):
            event.image = image
            row.result.codes.append(event.codes)
            row.result.parts += [image] if image is not None else []

    def _preview(self, codes: list[int]) -> object:
        n_codes = self.processor.num_gen_tokens
        return self._decode(_fill(torch.tensor([codes]), len(codes), n_codes))[0]

    def _decode(self, codes: torch.Tensor) -> list:
        """VQ codes (B, N) -> PIL images, a few at a time (None each when decoding is off)."""
        return decode_images(self.model, codes) if self.decode else [None] * codes.shape[0]


@atexit.register
def _stop_all() -> None:
    for scheduler in list(_SCHEDULERS):
        scheduler.stop()
    for thread in list(_LOOP_THREADS):
        thread.join(timeout=10)


def _to_device(values: list, device: torch.device) -> torch.Tensor:
    """A host list as a device tensor without waiting for the device (pinned, asynchronous copy)."""
    tensor = torch.tensor(values)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def check_max_batch(max_batch) -> int:
    """`max_batch`: a positive integer (cache rows in all)."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH:
        raise SettingsError(
            f"max_batch={max_batch!r} is not accepted; max_batch must be an integer in "
            f"[1, {MAX_BATCH}] (cache rows; a guided image takes 2, an image edit with "
            "image_cfg_scale 3)"
        )
    return max_batch
