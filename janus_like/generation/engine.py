"""One generation engine for text, images and interleaved output (docs/ARCHITECTURE.md §3).

Every request is a batch row with a small state machine:

    TEXT ──(samples <begin_of_image>, images allowed)──► IMAGE(k=0)
    IMAGE(k) ──(gen_head samples code k)──► IMAGE(k+1) … IMAGE(N) ──(forced <end_of_image>)──► TEXT
    TEXT ──(<eos>, a stop string or the token budget)──► DONE

The last code is fed like every other, and `<end_of_image>` is fed on the step after it in place
of whatever was sampled there, so the cache holds exactly the training layout
`<begin_of_image> c1 … cN <end_of_image>`.

Text-to-image rows start in IMAGE and are DONE after their image; chat rows may not open images.
All rows advance one token per step in lockstep over a static KV cache, so rows in different
modes share each decoder call. With guidance every row owns an unconditional twin slot: image
rows sample from `u + s·(c − u)`. A text row's twin is idle until the row opens an image; then
the twin's prompt (Janus's unconditional prompt for everything the row has seen) is prefilled
into the twin's cache slot, and the twin follows the row's codes until `<end_of_image>`.

Input images of text-to-image and interleaved prompts stay in the twin (only text is padded), so
guidance pushes towards the instruction relative to "the same image, no instruction": the text
term of InstructPix2Pix's two-scale guidance with image scale 1. Without input images this is
exactly Janus's unconditional prompt. With `image_cfg_scale` s_I ≠ 1, text-to-image rows with input
images get a third slot group holding the prompt with neither text nor images (u∅), for the whole
two-scale form `u∅ + s_I·(u_I − u∅) + s·(c − u_I)`.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, StaticCache

from ..errors import GenerationError, PromptError, SettingsError
from ..images import pixels_to_pil
from ..layout import GEN_IMAGE, TEXT, TokenSequence
from ..modeling import JanusLikeForConditionalGeneration, cache_kwarg
from ..processor import JanusLikeProcessor
from .events import Done, Event, ImageDone, ImageProgress, RowResult, TextDelta
from .sampling import guided_logits, image_guided_logits, penalize_repetition, plausible, sample
from .settings import GenerationSettings
from .text import TextSegment, special_ids

TEXT_MODE, IMAGE_MODE, DONE_MODE = "text", "image", "done"
DECODE_CHUNK = 8  # images decoded by the VQ decoder at once (bounds activation memory at 384²)
WIDTH_STEP = 64  # a decode step attends to the cache's first columns in multiples of this


@dataclass
class Request:
    """One row: a prompt and the state it starts in ("text" or "image")."""

    prompt: TokenSequence
    start: str = TEXT_MODE


@dataclass
class _Row:
    """Host-side state of one row."""

    mode: str
    context: TokenSequence | None  # everything a text row has seen, for its twin's prompt
    result: RowResult = field(default_factory=RowResult)
    text: TextSegment = field(default_factory=TextSegment)  # the text written since the last image
    forced: int | None = None  # a token fed next in place of the sampled one (<end_of_image>)
    codes: list[int] = field(default_factory=list)
    text_tokens: int = 0
    draw_only: bool = False  # a text-to-image row: DONE after its image


@dataclass
class _Batch:
    """One call's device state, created by the prefill and passed to every step (the engine keeps
    only the cache, which a compiled engine reuses across calls)."""

    generator: torch.Generator  # the call's noise
    mask: torch.Tensor  # (slots, columns) additive: what each slot may attend to
    positions: torch.Tensor  # (slots,) the position each slot writes next
    columns: int  # cache columns this call uses (a compiled engine's cache has one spare)


class GenerationEngine:
    """Batched generation over a static KV cache; `stream` yields events, `generate` results."""

    def __init__(
        self,
        model: JanusLikeForConditionalGeneration,
        processor: JanusLikeProcessor,
        compile: bool = False,
        decode: bool = True,
    ):
        """`compile`: torch.compile the decode step (CUDA graphs on GPU): the batch, the attended
        width (see `_attend`), guidance and temperature are inputs, not constants of the graph, so
        new settings need no new graph. `decode=False` returns codes only (images stay None)."""
        self.model = model.eval()
        self.processor = processor
        self.compile = compile
        self.decode = decode
        self._decoder = Decoder(model)
        self._special_ids = special_ids(processor)
        self.cache: StaticCache | None = None
        self._views: dict[int, StaticCache] = {}  # the cache cut to each width a step has used
        # compiled: one CUDA graph per decoder step (any mode), and one that also holds the image
        # head, guidance, sampling and code embedding (text-to-image), so a drawing step is one replay
        compiled = lambda fn: torch.compile(fn, mode="reduce-overhead", fullgraph=True, dynamic=False)
        self._step = compiled(self._decode_step) if compile else self._decode_step
        self._draw_step = compiled(self._image_step) if compile else self._image_step

    # ------------------------------------------------------------------ public

    def generate(self, requests: Sequence[Request], settings: GenerationSettings) -> list[RowResult]:
        """Run to the end and return one result per request."""
        for event in self.stream(requests, settings):
            if isinstance(event, Done):
                return event.results
        raise RuntimeError("the engine stopped without a Done event")

    def stream(self, requests: Sequence[Request], settings: GenerationSettings) -> Iterator[Event]:
        """Generate for all requests at once, yielding text deltas, image progress and images.
        The KV cache, masks and sampler belong to the engine, so its streams run one at a time: a
        new call takes them over, and a stream it interrupted raises GenerationError if read on."""
        owner = self._owner = object()
        for event in self._stream(requests, settings):
            yield event
            if self._owner is not owner:
                raise GenerationError(
                    "this generation was interrupted by a later call on the same engine or "
                    "pipeline, which took over its cache; read a stream to the end (or close "
                    "it) before the next call, or use one pipeline per concurrent stream"
                )

    @torch.inference_mode()
    def _stream(self, requests: Sequence[Request], settings: GenerationSettings) -> Iterator[Event]:
        if not requests:
            raise PromptError("nothing to generate: no prompts were given")
        if any(r.start not in (TEXT_MODE, IMAGE_MODE) for r in requests):
            raise SettingsError(f"a request starts in {TEXT_MODE!r} or {IMAGE_MODE!r}")
        n_codes = self.processor.num_gen_tokens
        batch = len(requests)
        any_text = any(r.start == TEXT_MODE for r in requests)
        may_draw = any(r.start == IMAGE_MODE for r in requests) or settings.max_images > 0
        # image guidance needs a third slot group [2·batch, 3·batch): rows without their input images;
        # with no input images that group would equal the twins, so it is left out
        image_guided = settings.image_guided and any(r.start == IMAGE_MODE and r.prompt.und_pixels for r in requests)
        if image_guided and any_text:
            raise SettingsError(
                f"image_cfg_scale={settings.image_cfg_scale!r} applies to drawing from input images "
                "(text-to-image rows); text and interleaved rows need image_cfg_scale=1"
            )
        guided = (settings.guided or image_guided) and may_draw  # then slots [batch, 2·batch) are the twins

        # sampled tokens per row -> fed-back tokens -> cache columns: prompt + what can be fed back
        # an interleaved image costs its codes and the forced <end_of_image> (its <begin_of_image> is text)
        budgets = [
            n_codes if r.start == IMAGE_MODE else settings.max_new_tokens + settings.max_images * (n_codes + 1)
            for r in requests
        ]
        for r, budget in zip(requests, budgets):
            if len(r.prompt) == 0:
                raise PromptError("the prompt is empty; give some text")
            self._check_room(r, budget, settings)
        prompts = self._slot_prompts(requests, guided, image_guided)
        length = max(len(s) for s in prompts)
        cache_len = length + max(budgets) - 1

        device = self.model.device
        generator = torch.Generator(device=device)
        generator.manual_seed(settings.seed if settings.seed is not None else secrets.randbits(63))
        hidden, state = self._prefill(prompts, length, cache_len, generator)
        self.kv_cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers)
        column = length

        rows = [
            _Row(
                mode=r.start, context=_copy(r.prompt) if r.start == TEXT_MODE else None, draw_only=r.start == IMAGE_MODE
            )
            for r in requests
        ]
        boi_blocked = torch.tensor([settings.max_images == 0] * batch, device=device)
        image_rows = torch.tensor([r.start == IMAGE_MODE for r in requests], device=device)
        seen = self._seen_tokens(requests) if settings.repetition_penalty != 1.0 else None

        if not any_text:  # text-to-image: every row draws in lockstep; nothing is read back
            yield from self._draw(state, rows, hidden, settings, column)
        for _ in range(max(budgets) if any_text else 0):
            modes = {row.mode for row in rows}
            tokens = self._sample(state, hidden, settings, guided, batch, modes, image_rows, boi_blocked, seen)
            events, fed_host, code_host, changed = self._advance(state, rows, tokens.tolist(), settings, column)
            yield from events
            if all(row.mode == DONE_MODE for row in rows):
                break
            fed, fed_is_code = tokens, image_rows
            if changed:  # a mode changed or a token was forced: feed what the host decided
                image_rows = torch.tensor([row.mode == IMAGE_MODE for row in rows], device=device)
                boi_blocked = torch.tensor(
                    [len(row.result.codes) >= settings.max_images for row in rows], device=device
                )
                fed_is_code = torch.tensor(code_host, device=device)
                fed = torch.tensor(fed_host, device=device)
            if seen is not None:
                seen[torch.arange(batch, device=device), torch.where(fed_is_code, 0, fed)] |= ~fed_is_code
            embeds = embed_fed(self.model, fed, fed_is_code, any(code_host) if changed else IMAGE_MODE in modes)
            if guided:
                embeds = embeds.repeat(2, 1)  # a twin is fed what its row is fed
            state.mask[:, column] = 0.0
            embeds, positions = embeds[:, None], state.positions[:, None]
            self._dynamic([0], embeds, positions)
            hidden = self._step(embeds, positions, *self._attend(state, column))
            if self.compile:
                hidden = hidden.clone()  # CUDA-graph outputs are overwritten by the next replay
            state.positions += 1
            column += 1
        for i, row in enumerate(rows):
            if row.mode != DONE_MODE:  # cannot happen within the budget; kept as a safe ending
                yield from self._close_text(i, row)
                row.result.finish_reason = "length"
        if not self.compile:
            self.cache, self._views = None, {}  # free the KV memory; a compiled engine keeps it for the next call
        yield Done([row.result for row in rows])

    def _check_room(self, request: Request, budget: int, settings: GenerationSettings) -> None:
        check_room(self.processor, self.model.config.text_config.max_position_embeddings, request, budget, settings)

    def _slot_prompts(self, requests: Sequence[Request], guided: bool, image_guided: bool) -> list[TokenSequence]:
        """The prompt of every cache slot: the rows; with guidance their twins (Janus's
        unconditional prompt with the input images kept; an idle pad for a text row until it opens
        an image); with image guidance, the rows with neither text nor input images. Parallel
        images of one prompt share one twin prompt object, which the prefill runs once."""
        p = self.processor
        distinct = {id(r.prompt): r.prompt for r in requests}
        prompts = [r.prompt for r in requests]
        if guided:
            twins = {key: p.unconditional(prompt, keep_images=True) for key, prompt in distinct.items()}
            idle = _placeholder(p.pad_id)
            prompts += [twins[id(r.prompt)] if r.start == IMAGE_MODE else idle for r in requests]
        if image_guided:
            bare = {key: p.unconditional(prompt) for key, prompt in distinct.items()}
            prompts += [bare[id(r.prompt)] for r in requests]
        return prompts

    # ------------------------------------------------------------------ decoder calls

    def _new_cache(self, slots: int, cache_len: int, like: DynamicCache) -> None:
        """A static cache of exactly `cache_len` columns for `slots` rows, shaped like `like`.
        transformers' StaticCache rather than our own: it works with any transformers decoder and
        marks its tensors as static addresses for CUDA graphs. A compiled engine reuses it when the
        shape repeats (no re-capture), and allocates one spare column that is never attended: its
        widest view (`_attend`) is then strided like the narrower ones, so the compiled step is not
        specialised a second time for a contiguous cache."""
        cache_len += int(self.compile)
        cache = self.cache
        if (
            self.compile
            and cache is not None
            and cache.get_max_length() == cache_len
            and cache.layers[0].keys.shape[0] == slots
        ):
            cache.reset()
            return
        self.cache, self._views = StaticCache(config=self._decoder.cache_config, max_cache_len=cache_len), {}
        empty = lambda t: t.new_zeros(slots, t.shape[1], 0, t.shape[-1])  # shape, dtype and device, no data
        for static, dynamic in zip(self.cache.layers, like.layers):
            # every layer on the device of its prefill keys: a decoder split over GPUs (device_map) works too
            static.lazy_initialization(empty(dynamic.keys), empty(dynamic.values))

    def _attend(self, state: _Batch, column: int) -> tuple[torch.Tensor, torch.Tensor | None, StaticCache]:
        """What a query at `column` attends over: the mask, its sliding-window cut (None without
        sliding layers) and the cache, all cut to the first `column + 1` columns rounded up to
        WIDTH_STEP, so that attention reads the filled part of the static cache rather than all of
        it (drawing at Janus-Pro-1B sizes read 1.8× the columns in use). A compiled step takes the
        width and the row count as dynamic sizes: one graph, a CUDA graph per shape."""
        width = min(state.columns, -(-(column + 1) // WIDTH_STEP) * WIDTH_STEP)
        mask, windowed = state.mask[:, :width], None
        if self._decoder.window is not None:  # each slot's columns are contiguous, so columns count positions
            windowed = mask.clone()
            windowed[:, : max(0, column - self._decoder.window + 1)] = torch.finfo(mask.dtype).min
        self._dynamic([0, 1], mask, windowed)  # rows and width
        if width not in self._views:
            view = copy.copy(self.cache)
            view.layers = [_first_columns(layer, width, self.compile) for layer in self.cache.layers]
            self._views[width] = view
        return mask, windowed, self._views[width]

    def _decode_step(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        windowed: torch.Tensor | None,
        cache: StaticCache,
    ) -> torch.Tensor:
        """One token for every slot: (slots, 1, H) -> last hidden state (slots, H). `mask` is the
        (slots, columns) additive mask of what each slot may attend to in `cache`; `windowed` the
        same cut to the sliding window, for sliding-attention layers (see `_attend`)."""
        masks = self._decoder.layer_masks(
            mask[:, None, None, :], None if windowed is None else windowed[:, None, None, :]
        )
        return self._decoder(embeds, positions, masks, cache)[:, -1]

    def _prefill(
        self, prompts: list[TokenSequence], length: int, cache_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, _Batch]:
        """Run each distinct prompt once (left-padded to `length`, with its understanding images),
        then copy its keys and values into the static cache of every slot that uses it; returns
        the slots' last hidden states and the call's state."""
        device = self.model.device
        distinct = list({id(s): s for s in prompts}.values())
        slot_of = {id(s): i for i, s in enumerate(distinct)}
        index = torch.tensor([slot_of[id(s)] for s in prompts], device=device)
        inputs = left_padded(self.model, self.processor.pad_id, distinct, length, self._decoder.window)
        embeds, real, lengths = inputs.embeds, inputs.real, inputs.lengths
        temp = DynamicCache(config=self._decoder.cache_config)
        hidden = self._decoder(embeds, inputs.positions, self._decoder.layer_masks(inputs.mask, inputs.windowed), temp)
        self._new_cache(len(prompts), cache_len, temp)
        for static, dynamic in zip(self.cache.layers, temp.layers):
            static.keys[:, :, :length] = dynamic.keys[index]
            static.values[:, :, :length] = dynamic.values[index]
            static.cumulative_length.fill_(length)
        mask = torch.full(
            (len(prompts), self.cache.get_max_length()),
            torch.finfo(embeds.dtype).min,
            dtype=embeds.dtype,
            device=device,
        )
        mask[:, :length].masked_fill_(real[index], 0.0)
        return hidden[index, -1], _Batch(generator, mask, lengths[index], cache_len)

    def _prefill_twin(self, state: _Batch, row_index: int, row: _Row, column: int, slots: int) -> None:
        """Write the twin's unconditional prompt for everything row `row_index` has seen (ending in
        `<begin_of_image>`, which the next lockstep call feeds) into its cache slot."""
        twin = self.processor.unconditional(row.context, keep_images=True)
        n = len(twin) - 1
        device = self.model.device
        ids = torch.tensor([twin.ids[:n]], device=device)
        modality = torch.tensor([twin.modality[:n]], device=device)
        pixels = torch.stack(twin.und_pixels).to(device) if twin.und_pixels else None
        embeds = self.model.embed_inputs(ids, modality, pixels)
        temp = DynamicCache(config=self._decoder.cache_config)
        self._decoder(embeds, torch.arange(n, device=device)[None], None, temp)  # the model's own causal masks
        slot, start = slots // 2 + row_index, column - n
        for static, dynamic in zip(self.cache.layers, temp.layers):
            static.keys[slot, :, start:column] = dynamic.keys[0]
            static.values[slot, :, start:column] = dynamic.values[0]
        state.mask[slot] = torch.finfo(state.mask.dtype).min
        state.mask[slot, start:column] = 0.0
        state.positions[slot] = n

    # ------------------------------------------------------------------ sampling

    def _sample(self, state, hidden, settings, guided, batch, modes, image_rows, boi_blocked, seen) -> torch.Tensor:
        """Next token of every row: image rows from the (guided) gen head, text rows from the LM head."""
        code = text = None
        if IMAGE_MODE in modes:
            logits = self.model.image_logits(hidden).float()
            cond = logits[:batch]
            if guided:
                logits = guided_logits(cond, logits[batch:], settings.cfg_scale)
            if settings.cfg_plausibility > 0:
                logits = plausible(logits, cond, settings.cfg_plausibility)
            code = sample(logits, settings.code_temperature, settings.top_k, settings.top_p, state.generator)
        if TEXT_MODE in modes:
            logits = self.model.text_logits(hidden[:batch]).float()
            if seen is not None:
                logits = penalize_repetition(logits, seen, settings.repetition_penalty)
            boi = self.processor.image_start_id
            if settings.max_images == 0:
                logits[:, boi] = float("-inf")
            else:
                logits[:, boi] = logits[:, boi].masked_fill(boi_blocked, float("-inf"))
            text = sample(logits, settings.temperature, settings.top_k, settings.top_p, state.generator)
        if code is None:
            return text if text is not None else torch.zeros(batch, dtype=torch.long, device=hidden.device)
        return code if text is None else torch.where(image_rows, code, text)

    def _draw(
        self, state: _Batch, rows: list[_Row], hidden: torch.Tensor, settings: GenerationSettings, column: int
    ) -> Iterator[Event]:
        """Text-to-image rows: N codes each, one (compiled) draw step per code, no host sync."""
        batch, n_codes = len(rows), self.processor.num_gen_tokens
        codebook = self.model.gen_embed.num_embeddings
        # the compiled step takes guidance and temperature as tensors (values, not graph constants),
        # so that a new setting is no new graph; greedy (temperature 0) is a graph of its own. Eager
        # steps take plain numbers: no tensor arithmetic for a temperature of 1
        value = (lambda x: torch.tensor(float(x), device=hidden.device)) if self.compile else float
        groups = hidden.shape[0] // batch  # rows, their twins, then rows without input images
        picks = (
            value(settings.code_temperature) if settings.code_temperature > 0 else 0.0,
            settings.top_k,
            settings.top_p,
            value(settings.cfg_scale) if groups > 1 else None,
            value(settings.image_cfg_scale) if groups > 2 else None,
            value(settings.cfg_plausibility) if settings.cfg_plausibility > 0 else None,
        )
        codes = torch.zeros(batch, n_codes, dtype=torch.long, device=hidden.device)
        for k in range(n_codes):
            noise = None
            if settings.code_temperature > 0:
                noise = torch.empty(batch, codebook, device=hidden.device).exponential_(generator=state.generator)
            if k + 1 < n_codes:
                state.mask[:, column + k] = 0.0
                positions = state.positions + k
                self._dynamic([0], hidden, noise, positions)
                code, hidden = self._draw_step(hidden, noise, positions, *self._attend(state, column + k), *picks)
                if self.compile:
                    hidden = hidden.clone()  # CUDA-graph outputs are overwritten by the next replay
            else:
                code = self._pick_codes(hidden, noise, *picks)
            codes[:, k] = code
            yield from self._image_progress(rows, k + 1, settings, codes)
        yield from self._finish_images(rows, codes)

    def _pick_codes(
        self, hidden, noise, temperature, top_k, top_p, cfg_scale, image_cfg_scale, plausibility
    ) -> torch.Tensor:
        """Image head on every slot, guidance when twins follow the rows (`cfg_scale` None
        without; `image_cfg_scale` None without the third group), the plausibility cut (None:
        off), then a code per row."""
        logits = cond = self.model.image_logits(hidden).float()
        if image_cfg_scale is not None:
            cond, twin, bare = logits.chunk(3)
            logits = image_guided_logits(cond, twin, bare, cfg_scale, image_cfg_scale)
        elif cfg_scale is not None:
            cond, twin = logits.chunk(2)
            logits = guided_logits(cond, twin, cfg_scale)
        if plausibility is not None:
            logits = plausible(logits, cond, plausibility)
        return sample(logits, temperature, top_k, top_p, noise=noise)

    def _image_step(
        self,
        hidden,
        noise,
        positions,
        mask,
        windowed,
        cache,
        temperature,
        top_k,
        top_p,
        cfg_scale,
        image_cfg_scale,
        plausibility,
    ):
        """Sample a code for every row and run the decoder on it: one drawing step."""
        code = self._pick_codes(hidden, noise, temperature, top_k, top_p, cfg_scale, image_cfg_scale, plausibility)
        embeds = self.model.gen_image_embeddings(code)
        groups = 1 + (cfg_scale is not None) + (image_cfg_scale is not None)
        embeds = embeds.repeat(groups, 1)  # twins (and rows without input images) are fed the row's code
        return code, self._decode_step(embeds[:, None], positions[:, None], mask, windowed, cache)

    def _dynamic(self, dims: list[int], *tensors: torch.Tensor | None) -> None:
        """Compiled: these dimensions of the step inputs (rows, width) are dynamic sizes, so that one
        graph serves every batch and width (CUDA graphs are still one per shape). `maybe_`: one
        guided row splits into halves of size 1, which torch.compile always specialises; that case
        gets a graph of its own rather than an error."""
        if self.compile:
            for tensor in tensors:
                if tensor is not None:
                    torch._dynamo.maybe_mark_dynamic(tensor, dims)

    def _seen_tokens(self, requests: Sequence[Request]) -> torch.Tensor:
        """(rows, vocab) mask of the text ids in each prompt, for the repetition penalty."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        seen = torch.zeros(len(requests), vocab, dtype=torch.bool)
        for i, r in enumerate(requests):
            ids = [t for t, m in zip(r.prompt.ids, r.prompt.modality) if m == TEXT]
            seen[i, ids] = True
        return seen.to(self.model.device)

    # ------------------------------------------------------------------ row state machine

    def _advance(self, state: _Batch, rows: list[_Row], tokens: list[int], settings: GenerationSettings, column: int):
        """Apply one step's tokens to every row's state; return the events, the ids to feed back,
        which of them are image codes, and whether any row changed mode or was fed a forced token
        (then the device must take the fed ids from the host)."""
        p, n_codes = self.processor, self.processor.num_gen_tokens
        events, fed, changed = [], list(tokens), False
        is_code = [row.mode == IMAGE_MODE for row in rows]  # a sampled code is fed as a code, the last one too
        for i, (row, token) in enumerate(zip(rows, tokens)):
            if row.mode == DONE_MODE:
                continue
            if row.forced is not None:  # <end_of_image> after the last code: the sample is not used
                fed[i], row.forced, changed = row.forced, None, True
                row.result.token_ids.append(fed[i])
                row.context.add([fed[i]], TEXT, False)
                if row.text_tokens >= settings.max_new_tokens:
                    row.mode, row.result.finish_reason = DONE_MODE, "length"
                continue
            row.result.token_ids.append(token)
            if row.mode == IMAGE_MODE:
                row.codes.append(token)
                if row.context is not None:
                    row.context.add([token], GEN_IMAGE, False)
                index, done = len(row.result.codes), len(row.codes)
                preview = self._preview(row.codes) if _preview_due(done, settings, n_codes) else None
                events.append(ImageProgress(i, index, done, n_codes, preview))
                if done == n_codes:
                    codes = torch.tensor(row.codes)
                    image = self._decode(codes[None])[0]
                    row.result.codes.append(codes)
                    row.result.parts += [image] if image is not None else []
                    events.append(ImageDone(i, index, image, codes))
                    row.codes, changed = [], True
                    if row.draw_only:
                        row.mode, row.result.finish_reason = DONE_MODE, "image"
                        continue
                    row.mode, row.forced = TEXT_MODE, p.image_end_id  # the code is fed now, the end next
                continue
            row.text_tokens += 1
            if token == p.eos_id and not settings.ignore_eos:
                events += self._close_text(i, row)
                row.mode, row.result.finish_reason, changed = DONE_MODE, "eos", True
                continue
            if token == p.image_start_id and len(row.result.codes) < settings.max_images:
                events += self._close_text(i, row)
                row.context.add([token], TEXT, False)
                row.mode, changed = IMAGE_MODE, True
                if settings.guided:
                    self._prefill_twin(state, i, row, column, 2 * len(rows))
                continue
            row.context.add([token], TEXT, False)
            row.text.add(token, p, self._special_ids)
            hit = row.text.stop_at(settings.stop)
            if hit >= 0:
                events += self._close_text(i, row, hit)
                row.mode, row.result.finish_reason, changed = DONE_MODE, "stop", True
            elif row.text_tokens >= settings.max_new_tokens:
                events += self._close_text(i, row)
                row.mode, row.result.finish_reason, changed = DONE_MODE, "length", True
            elif delta := row.text.delta(settings.stop):
                events.append(TextDelta(i, delta))
        return events, fed, is_code, changed

    def _close_text(self, i: int, row: _Row, end: int | None = None) -> list[Event]:
        """End the current text segment (at a stop string beginning at `end`): stream what is left of
        it and add it to the parts."""
        text, rest = row.text.close(end)
        if text:
            row.result.parts.append(text)
        return [TextDelta(i, rest)] if rest else []

    # ------------------------------------------------------------------ images

    def _image_progress(self, rows, done: int, settings, image_codes) -> Iterator[Event]:
        n_codes = self.processor.num_gen_tokens
        previews = None
        if _preview_due(done, settings, n_codes):
            previews = self._decode(_fill(image_codes, done))
        for i, _ in enumerate(rows):
            yield ImageProgress(i, 0, done, n_codes, previews[i] if previews else None)

    def _finish_images(self, rows: list[_Row], image_codes: torch.Tensor) -> Iterator[Event]:
        codes = image_codes.cpu()
        images = self._decode(codes)
        for i, (row, image) in enumerate(zip(rows, images)):
            row.result.codes.append(codes[i])
            row.result.token_ids.extend(codes[i].tolist())
            row.result.parts += [image] if image is not None else []
            row.mode, row.result.finish_reason = DONE_MODE, "image"
            yield ImageDone(i, 0, image, codes[i])

    def _preview(self, codes: list[int]) -> object:
        n_codes = self.processor.num_gen_tokens
        return self._decode(_fill(torch.tensor([codes]), len(codes), n_codes))[0]

    def _decode(self, codes: torch.Tensor) -> list:
        """VQ codes (B, N) -> PIL images, a few at a time (None each when decoding is off)."""
        return decode_images(self.model, codes) if self.decode else [None] * codes.shape[0]


def check_room(
    processor: JanusLikeProcessor,
    limit: int,
    request: Request,
    budget: int,
    settings: GenerationSettings,
    holder: str = "the model's context",
) -> None:
    """The prompt and the most a row may generate must fit `limit` positions; the message says what to cut."""
    if len(request.prompt) + budget <= limit:
        return
    if request.start == IMAGE_MODE:
        what, cut = f"an image's {budget} codes", "a shorter prompt or fewer input images"
    else:
        what, knobs = f"max_new_tokens={settings.max_new_tokens}", "max_new_tokens"
        if settings.max_images:
            what += f" and max_images={settings.max_images} × {processor.num_gen_tokens + 1} image tokens"
            knobs += " or max_images"
        cut = f"a shorter prompt (or conversation), fewer input images, or lower {knobs}"
    raise PromptError(
        f"the prompt's {len(request.prompt)} tokens and up to {budget} generated ones ({what}) "
        f"need {len(request.prompt) + budget} positions, but {holder} holds {limit}; "
        f"use {cut}"
    )


class Decoder:
    """The LM decoder as the engine and the scheduler call it: its KV-cache argument's name, its
    sliding-window layout, and the config their caches are built from (full history when layers slide)."""

    def __init__(self, model: JanusLikeForConditionalGeneration):
        text = model.config.text_config
        self.body = model.decoder  # resolved once: the property walks the LM on every access
        self.cache_name = cache_kwarg(type(self.body))
        self.window, self.layer_types = _attention_layout(text)
        self.cache_config = _full_history_config(text) if self.window is not None else text

    def __call__(self, embeds: torch.Tensor, positions: torch.Tensor, mask, cache) -> torch.Tensor:
        """The decoder's last hidden states for `embeds`, written into `cache`."""
        out = self.body(
            inputs_embeds=embeds,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            **{self.cache_name: cache},
        )
        return out.last_hidden_state

    def layer_masks(self, full: torch.Tensor, windowed: torch.Tensor | None):
        """The attention mask argument: one 4D mask, or one per layer type for decoders whose
        layers mix full and sliding-window attention (transformers takes a dict then)."""
        if self.window is None:
            return full
        if self.layer_types is None:  # every layer slides (Mistral)
            return windowed
        return {"full_attention": full, "sliding_attention": windowed}


def embed_fed(
    model: JanusLikeForConditionalGeneration, tokens: torch.Tensor, is_code: torch.Tensor, any_code: bool
) -> torch.Tensor:
    """Decoder inputs for the tokens fed in a step: text embeddings or embedded VQ codes per row."""
    if not any_code:
        return model.get_input_embeddings()(tokens)
    text = model.get_input_embeddings()(torch.where(is_code, 0, tokens))
    image = model.gen_image_embeddings(torch.where(is_code, tokens, 0)).to(text.dtype)
    return torch.where(is_code[:, None], image, text)


def decode_images(model: JanusLikeForConditionalGeneration, codes: torch.Tensor) -> list:
    """VQ codes (B, N) -> PIL images, DECODE_CHUNK at a time (bounds the VQ decoder's activations)."""
    images = []
    for chunk in codes.split(DECODE_CHUNK):
        images += pixels_to_pil(model.vq.decode(chunk.to(model.device)))
    return images


@dataclass
class PrefillInputs:
    """One prefill call's inputs for prompts left-padded to a common length."""

    embeds: torch.Tensor  # (prompts, length, hidden), understanding images filled in
    positions: torch.Tensor  # (prompts, length), counting from each prompt's first token
    mask: torch.Tensor  # (prompts, 1, length, length) additive: causal over each prompt's own columns
    windowed: torch.Tensor | None  # the same within a sliding window, for decoders that have one
    real: torch.Tensor  # (prompts, length) bool: not left padding
    lengths: torch.Tensor  # (prompts,)


def left_padded(
    model: JanusLikeForConditionalGeneration,
    pad_id: int,
    prompts: Sequence[TokenSequence],
    length: int,
    window: int | None,
) -> PrefillInputs:
    """The engine's and the scheduler's prefill inputs: `prompts` left-padded to `length`."""
    device = model.device
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    modality = torch.full_like(ids, TEXT)
    for i, s in enumerate(prompts):
        ids[i, length - len(s) :] = torch.tensor(s.ids)
        modality[i, length - len(s) :] = torch.tensor(s.modality)
    pixels = [x for s in prompts for x in s.und_pixels]
    pixel_values = torch.stack(pixels).to(device) if pixels else None
    embeds = model.embed_inputs(ids.to(device), modality.to(device), pixel_values)
    lengths = torch.tensor([len(s) for s in prompts], device=device)
    columns = torch.arange(length, device=device)
    real = columns[None, :] >= (length - lengths)[:, None]
    allowed = (real[:, None, :] & (columns[None, :] <= columns[:, None])) | torch.eye(
        length, dtype=torch.bool, device=device
    )
    positions = (columns - (length - lengths)[:, None]).clamp_min(0)
    windowed = None
    if window is not None:  # left padding shifts query and key alike: columns count positions
        in_window = columns[:, None] - columns[None, :] < window
        windowed = _additive((allowed & in_window)[:, None], embeds.dtype)
    return PrefillInputs(embeds, positions, _additive(allowed[:, None], embeds.dtype), windowed, real, lengths)


def _attention_layout(config) -> tuple[int | None, list[str] | None]:
    """(sliding window or None, per-layer attention types or None) of a decoder config. Full and
    sliding-window attention are supported; other kinds (chunked, linear) are refused."""
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        unknown = set(layer_types) - {"full_attention", "sliding_attention"}
        if unknown:
            raise SettingsError(
                f"the decoder has {', '.join(sorted(unknown))} layers; the generation engine "
                "supports full and sliding-window attention layers"
            )
        if "sliding_attention" not in layer_types:
            window = None
    return window, (list(layer_types) if layer_types is not None and window is not None else None)


def _full_history_config(config):
    """A sliding-window decoder's config for the engine's caches: sliding layers keep their whole
    history too, since the engine applies windows through its masks (transformers' sliding cache
    layers roll a window-sized buffer, which the engine's column bookkeeping cannot follow)."""
    config = copy.copy(config)
    config.sliding_window = None
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = ["full_attention"] * len(config.layer_types)
    return config


def _first_columns(layer, width: int, compiled: bool):
    """A static cache layer over the first `width` columns of `layer`: the same storage and the
    same write position (the shared `cumulative_length`), so writes through it land in `layer`."""
    cut = copy.copy(layer)
    cut.keys, cut.values, cut.max_cache_len = layer.keys[:, :, :width], layer.values[:, :, :width], width
    if compiled:
        for tensor in (cut.keys, cut.values):
            torch._dynamo.mark_static_address(tensor)  # fixed storage: CUDA graphs use it in place
            torch._dynamo.maybe_mark_dynamic(tensor, [0, 2])  # rows and width (see GenerationEngine._dynamic)
    return cut


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool 'may attend' -> additive mask (works for SDPA and eager attention alike)."""
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)


def _placeholder(pad_id: int) -> TokenSequence:
    """An idle twin: one pad token, overwritten when its row opens an image."""
    seq = TokenSequence()
    seq.add([pad_id], TEXT, False)
    return seq


def _copy(seq: TokenSequence) -> TokenSequence:
    return TokenSequence(list(seq.ids), list(seq.modality), list(seq.trainable), list(seq.und_pixels))


def _preview_due(done: int, settings: GenerationSettings, total: int) -> bool:
    return settings.preview_every > 0 and done % settings.preview_every == 0 and done < total


def _fill(codes: torch.Tensor, done: int, total: int | None = None) -> torch.Tensor:
    """Codes sampled so far, the rest of the grid filled with code 0 (for previews)."""
    total = total or codes.shape[1]
    out = torch.zeros(codes.shape[0], total, dtype=torch.long)
    out[:, :done] = codes[:, :done].cpu()
    return out
