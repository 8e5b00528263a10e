"""`create_app`: an OpenAI-compatible HTTP API (FastAPI) over one JanusLikePipeline.

Chat completions (text and data-URL images in; text, or with `modalities: ["text", "image"]`
interleaved text and markdown data-URL images out; streamed as server-sent events), image
generations and edits (base64 PNGs), models, health and Prometheus metrics. The server keeps no
state between requests. docs/serving.md describes the API a client sees."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ImageError, JanusLikeError
from ..generation.events import Done, ImageDone, RowResult, TextDelta
from ..generation.settings import MAX_SEED, check_sampling
from ..pipeline import JanusLikePipeline, check_prompt
from . import openai_schema as schema
from .media import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    image_from_bytes,
    image_from_data_url,
    markdown_image,
    png_base64,
)
from .metrics import ServerMetrics
from .runner import Run

DEFAULT_MODEL_ID = "janus-like-default"
RETRY_AFTER_S = 1  # what a 429 tells the client to wait: a decode step frees slots within milliseconds
MAX_INPUT_IMAGES = 8  # image files of one edit request
FINISH_REASONS = {"eos": "stop", "stop": "stop", "image": "stop", "length": "length"}
log = logging.getLogger("janus_like.serving")


@dataclass
class ServerSettings:
    """What `janus-like serve` configures (its --help describes each)."""

    model_id: str = DEFAULT_MODEL_ID
    max_batch: int = 32
    max_queue: int = 64
    api_key: str | None = None
    max_body_bytes: int = 32 * 2**20
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    allow_special_tokens: bool = False


class ApiError(Exception):
    """An HTTP error, answered in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return schema.error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers)


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


@dataclass
class _State:
    pipeline: JanusLikePipeline
    settings: ServerSettings
    metrics: ServerMetrics
    started: int

    def admit(self) -> Callable[[], None]:
        """Count a request in flight, or refuse it with 429 when max_batch + max_queue already are;
        returns the call that counts it out. (The event loop runs one handler at a time: no race.)"""
        limit = self.settings.max_batch + self.settings.max_queue
        if self.metrics.in_flight >= limit:
            self.metrics.add(rejected=1)
            raise ApiError(
                429,
                f"the server is busy: {limit} requests are in flight (max_batch "
                f"{self.settings.max_batch} + max_queue {self.settings.max_queue}); retry after "
                f"{RETRY_AFTER_S} s",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.metrics.add(in_flight=1)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.metrics.add(in_flight=-1)

        return release


def create_app(pipeline: JanusLikePipeline, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI application serving `pipeline`. It sets `pipeline.processor.literal_user_text`
    (special-token strings a client types stay text) unless `settings.allow_special_tokens`."""
    settings = settings or ServerSettings()
    pipeline.processor.literal_user_text = not settings.allow_special_tokens
    state = _State(pipeline, settings, ServerMetrics(), int(time.time()))
    app = FastAPI(title="janus_like", summary="OpenAI-compatible text and image generation")
    _add_error_handlers(app)
    _add_routes(app, state)
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(_ApiKey, key=settings.api_key)
    app.add_middleware(_Timing, metrics=state.metrics)  # outermost: refused requests are timed too
    return app


# ---------------------------------------------------------------------- routes


def _add_routes(app: FastAPI, state: _State) -> None:
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": state.settings.model_id}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        _check_model(state, model_id)
        return _model_card(state)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: schema.ChatCompletionRequest, request: Request) -> Response:
        _check_model(state, body.model)
        plan = await run_in_threadpool(_ChatPlan, state, body)
        return await _chat(request, state, body, plan)

    @app.post("/v1/images/generations")
    async def images_generations(body: schema.ImageGenerationRequest, request: Request) -> dict:
        return await _images(request, state, body, [])

    @app.post("/v1/images/edits")
    async def images_edits(request: Request) -> dict:
        fields, files = await _edit_form(request)
        body = _validated(schema.ImageEditRequest, fields)
        if not files:
            raise ApiError(
                400, "image is required: send the image to edit as a multipart file field 'image'", param="image"
            )
        images = await run_in_threadpool(_read_uploads, files, state.settings.max_image_pixels)
        return await _images(request, state, body, images)


def _model_card(state: _State) -> dict:
    return {"id": state.settings.model_id, "object": "model", "created": state.started, "owned_by": "janus_like"}


def _check_model(state: _State, model: str | None) -> None:
    """A request naming a model must name this server's (None: the images endpoints' default)."""
    if model is not None and model != state.settings.model_id:
        raise ApiError(
            404,
            f"model {model!r} does not exist here; this server serves {state.settings.model_id!r} (GET /v1/models)",
            param="model",
            code="model_not_found",
        )


# ---------------------------------------------------------------------- chat


class _ChatPlan:
    """A chat request turned into the pipeline's terms (images decoded, settings checked, prompt
    counted), on a worker thread: decoding and tokenising are CPU work the event loop must not do."""

    def __init__(self, state: _State, body: schema.ChatCompletionRequest):
        self.mode = "interleave" if body.interleaved else "chat"
        self.messages = [
            _message(m, f"messages[{i}]", state.settings.max_image_pixels) for i, m in enumerate(body.messages)
        ]
        self.settings = _chat_settings(body, self.mode)
        check_sampling(**self.settings)
        # the pipeline builds this same sequence; counted here for `usage` (interleaving uses no system prompt)
        system = "" if self.mode == "interleave" else None
        self.prompt_tokens = len(state.pipeline.processor.conversation(self.messages, system_prompt=system))

    def starts(self, pipeline: JanusLikePipeline, n: int) -> list[Callable]:
        """One generation per choice; a seeded request's choice i draws with seed + i."""
        seed = self.settings["seed"]
        return [
            partial(
                pipeline.stream,
                self.messages,
                self.mode,
                **{**self.settings, "seed": None if seed is None else (seed + i) % (MAX_SEED + 1)},
            )
            for i in range(n)
        ]


def _chat_settings(body: schema.ChatCompletionRequest, mode: str) -> dict:
    settings = {
        "max_new_tokens": body.max_completion_tokens or body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "repetition_penalty": body.repetition_penalty,
        "stop": body.stop,
        "seed": body.seed,
        "ignore_eos": body.ignore_eos,
    }
    interleave_only = {
        "cfg_scale": body.cfg_scale,
        "image_temperature": body.image_temperature,
        "max_images": body.max_images,
    }
    if mode == "chat":
        given = [name for name, value in interleave_only.items() if value is not None]
        if given:
            raise ApiError(
                400,
                f'{given[0]} applies to interleaved output; add "modalities": ["text", "image"] '
                "to get images in the answer",
                param=given[0],
            )
        return settings
    return {**settings, **interleave_only}


def _message(message: schema.Message, where: str, max_pixels: int) -> dict:
    """An OpenAI message -> the processor's {"role", "content"} (data-URL images decoded to PIL images)."""
    role = "system" if message.role == "developer" else message.role
    content = message.content
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise ApiError(
            400,
            f"{where}.content must be a string or a list of content parts, got {type(content).__name__}",
            param=f"{where}.content",
        )
    return {
        "role": role,
        "content": [_part(part, f"{where}.content[{j}]", max_pixels) for j, part in enumerate(content)],
    }


def _part(part, where: str, max_pixels: int) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        try:
            return {"type": "image", "image": image_from_data_url(url, f"{where}.image_url", max_pixels)}
        except ImageError as e:
            raise _as_api_error(e, param=f"{where}.image_url") from e
    raise ApiError(
        400,
        f'{where}: unknown content part {_short(part)}; accepted: {{"type": "text", "text": '
        '...} or {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}',
        param=where,
    )


async def _chat(request: Request, state: _State, body: schema.ChatCompletionRequest, plan: _ChatPlan) -> Response:
    release = state.admit()
    run = Run(plan.starts(state.pipeline, body.n), 1, state.metrics)
    answer = _ChatAnswer(state.settings.model_id, body, plan.prompt_tokens)
    streaming = False
    try:
        await _unless_disconnected(request, run.first())
        if body.stream:  # from here on the stream ends the run, however it ends
            streaming = True
            return _EventStream(answer.stream(run), on_close=lambda: (run.cancel(), release()))
        results = [done.results[0] for done in await _unless_disconnected(request, _dones(run, body.n))]
    finally:
        if not streaming:
            run.cancel()
            release()
    return JSONResponse(answer.complete(results))


async def _dones(run: Run, n: int) -> list[Done]:
    """Each of the run's n generations' Done event, in their order."""
    dones: list[Done | None] = [None] * n
    async for index, event in run.events():
        if isinstance(event, Done):
            dones[index] = event
    return dones


class _ChatAnswer:
    """A chat request's answer, as one `chat.completion` or as streamed chunks."""

    def __init__(self, model: str, body: schema.ChatCompletionRequest, prompt_tokens: int):
        self.model, self.body, self.prompt_tokens = model, body, prompt_tokens
        self.id, self.created = schema.completion_id(), int(time.time())

    def complete(self, results: list[RowResult]) -> dict:
        choices = [
            {"index": i, "content": self._content(r), "finish_reason": FINISH_REASONS.get(r.finish_reason)}
            for i, r in enumerate(results)
        ]
        return schema.chat_completion(self.id, self.model, choices, self._usage(results))

    def _content(self, result: RowResult) -> str:
        """Chat: the answer with its ends stripped (as JanusLikePipeline.chat); interleaved: text
        and markdown images in order (as JanusLikePipeline.interleave's parts)."""
        if not self.body.interleaved:
            return result.text.strip()
        numbers = itertools.count(1)
        return "".join(p if isinstance(p, str) else markdown_image(p, next(numbers)) for p in result.parts)

    def _usage(self, results: list[RowResult]) -> dict:
        return schema.usage(self.prompt_tokens * len(results), sum(len(r.token_ids) for r in results))

    async def stream(self, run: Run) -> AsyncIterator[str]:
        """Server-sent events: a role chunk per choice, content deltas (images as markdown parts),
        a finishing chunk per choice, the usage chunk when asked for, then [DONE]."""
        n = self.body.n
        trims = [_Trim(strip=not self.body.interleaved) for _ in range(n)]
        images, results = [0] * n, []
        try:
            for i in range(n):
                yield self._chunk(i, {"role": "assistant", "content": ""})
            async for i, event in run.events():
                if isinstance(event, TextDelta) and (text := trims[i].feed(event.text)):
                    yield self._chunk(i, {"content": text})
                elif isinstance(event, ImageDone):
                    images[i] += 1
                    yield self._chunk(i, {"content": markdown_image(event.image, images[i])})
                elif isinstance(event, Done):
                    results.append(event.results[0])
                    yield self._chunk(i, {}, FINISH_REASONS.get(event.results[0].finish_reason))
            if self.body.stream_options and self.body.stream_options.include_usage:
                yield _sse(schema.chat_chunk(self.id, self.model, self.created, usage_=self._usage(results)))
        except Exception as error:  # the stream has begun: the error is its last event
            yield _sse(_error_of(error).body())
        yield "data: [DONE]\n\n"

    def _chunk(self, index: int, delta: dict, finish_reason: str | None = None) -> str:
        return _sse(schema.chat_chunk(self.id, self.model, self.created, index, delta, finish_reason))


class _Trim:
    """Streamed text with its two ends stripped as `JanusLikePipeline.chat` strips the whole answer:
    leading whitespace dropped, trailing whitespace held back until more text follows."""

    def __init__(self, strip: bool):
        self.strip, self.started, self.held = strip, False, ""

    def feed(self, text: str) -> str:
        if not self.strip:
            return text
        text = self.held + text
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        shown = text.rstrip()
        self.held = text[len(shown) :]
        return shown


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class _EventStream(StreamingResponse):
    """Server-sent events that run `on_close` however the stream ends (a client gone included):
    Starlette stops iterating a stream whose client left but does not close it."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], object]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            await self.body_iterator.aclose()


# ---------------------------------------------------------------------- images


async def _images(
    request: Request, state: _State, body: schema.ImageGenerationRequest, inputs: list[Image.Image]
) -> dict:
    _check_model(state, body.model)
    size = _check_size(state.pipeline, body.size)
    if body.response_format == "url":
        raise ApiError(
            400,
            "response_format='url' is not supported: the server stores no files; use 'b64_json' (the default)",
            param="response_format",
        )
    settings = {
        "cfg_scale": body.cfg_scale,
        "cfg_plausibility": body.cfg_plausibility,
        "seed": body.seed,
        "temperature": body.temperature,
        "top_k": body.top_k,
        "top_p": body.top_p,
        "image_cfg_scale": getattr(body, "image_cfg_scale", None),
    }
    await run_in_threadpool(_check_image_request, body.prompt, settings)
    start = partial(state.pipeline.stream, body.prompt, "images", images=inputs, num_images=body.n, **settings)
    release = state.admit()
    run = Run([start], body.n, state.metrics)
    try:
        await _unless_disconnected(request, run.first())
        [done] = await _unless_disconnected(request, _dones(run, 1))
    finally:
        run.cancel()
        release()
    pngs = await run_in_threadpool(lambda: [png_base64(im) for result in done.results for im in result.images])
    return schema.images_response(pngs, size)


def _check_size(pipeline: JanusLikePipeline, size: str | None) -> str:
    """The model draws one size: `size` must be it (or 'auto'); returns it as WIDTHxHEIGHT."""
    side = pipeline.model.config.gen_image_size
    accepted = f"{side}x{side}"
    if size not in (None, "auto", accepted):
        raise ApiError(
            400,
            f"size={size!r} is not accepted; this model draws {accepted} images: size must be {accepted!r} (or 'auto')",
            param="size",
        )
    return accepted


def _check_image_request(prompt: str, settings: dict) -> None:
    check_prompt(prompt)
    check_sampling(**settings)


async def _edit_form(request: Request) -> tuple[dict, list[UploadFile]]:
    """An edit request's multipart form: its fields and its image files (`image` or `image[]`)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(
            400,
            "an edit request is a multipart/form-data body: the file field 'image' and the fields "
            "'prompt', 'n', ... (the openai client's images.edit sends one)",
        )
    form = await request.form(max_files=MAX_INPUT_IMAGES, max_fields=32)
    fields, files = {}, []
    for name, value in form.multi_items():
        if name == "mask":
            raise ApiError(
                400, "mask is not supported: the prompt says what to change in the whole image", param="mask"
            )
        if name in ("image", "image[]") and isinstance(value, UploadFile):
            files.append(value)
        elif isinstance(value, UploadFile):
            raise ApiError(400, f"field {name!r} is a file; only 'image' (or 'image[]') takes files", param=name)
        else:
            fields[name] = value
    return fields, files


def _read_uploads(files: list[UploadFile], max_pixels: int) -> list[Image.Image]:
    images = []
    for i, upload in enumerate(files):
        name = f"image {i} ({upload.filename or 'unnamed'})"
        try:
            images.append(image_from_bytes(upload.file.read(), name, max_pixels))
        except ImageError as e:
            raise _as_api_error(e, param="image") from e
    return images


def _validated(model: type[BaseModel], fields: dict) -> BaseModel:
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        raise _validation_error(e.errors(), model) from e


# ---------------------------------------------------------------------- disconnects


async def _unless_disconnected(request: Request, awaitable: Awaitable):
    """`awaitable`'s result, or _ClientGone as soon as the client disconnects (the body is read by
    now, so the next message is the disconnect)."""
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work.done():
        return work.result()
    work.cancel()
    raise _ClientGone


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---------------------------------------------------------------------- errors


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error.response()

    @app.exception_handler(JanusLikeError)
    async def user_error(request: Request, error: JanusLikeError) -> Response:
        return _as_api_error(error).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        model = _BODY_MODELS.get(request.url.path)
        return _validation_error(list(error.errors()), model).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 413:
            return _body_too_large().response()
        message = {
            404: f"no such endpoint: {request.method} {request.url.path}",
            405: f"method {request.method} is not allowed on {request.url.path}",
        }.get(error.status_code, str(error.detail))
        return ApiError(error.status_code, message).response()

    @app.exception_handler(_ClientGone)
    async def gone(request: Request, error: _ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> Response:
        return _error_of(error).response()


_BODY_MODELS = {
    "/v1/chat/completions": schema.ChatCompletionRequest,
    "/v1/images/generations": schema.ImageGenerationRequest,
}


def _error_of(error: BaseException) -> ApiError:
    """Any exception as the ApiError answering it: ours as they are, bad input 400 (413 for huge
    images), anything else a logged 500 (the server goes on)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, JanusLikeError):
        return _as_api_error(error)
    log.error("internal error while serving a request", exc_info=error)
    return ApiError(500, f"internal error ({type(error).__name__}); the server logged it and goes on", "server_error")


def _as_api_error(error: JanusLikeError, param: str | None = None) -> ApiError:
    # the library names the API's max_tokens max_new_tokens
    message = str(error).replace("max_new_tokens", "max_tokens")
    if isinstance(error, ImageTooLargeError):
        return ApiError(413, message, param=param, code="image_too_large")
    named = re.match(r"(\w+)=", message)
    return ApiError(400, message, param=param or (named[1] if named else None))


def _validation_error(errors: list[dict], model: type[BaseModel] | None) -> ApiError:
    """The first of pydantic's errors as one 400 message naming the field and what it accepts."""
    error = errors[0]
    where = [str(part) for part in error["loc"] if part != "body"]
    param = ".".join(where) or None
    if error["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
    if param is None:
        return ApiError(400, f"the request body must be a JSON object of the endpoint's fields ({error['msg']})")
    fields = list(model.model_fields) if model is not None else []
    if error["type"] == "extra_forbidden":
        accepted = f"; accepted fields: {', '.join(fields)}" if len(where) == 1 and fields else ""
        return ApiError(400, f"unknown field {param!r}{accepted}", param=param)
    if error["type"] == "missing":
        return ApiError(400, f"{param} is required", param=param)
    field = model.model_fields.get(where[0]) if model is not None and len(where) == 1 else None
    accepted = f"; accepted: {field.description}" if field is not None and field.description else ""
    return ApiError(400, f"{param}={_short(error.get('input'))} is not accepted: {error['msg']}{accepted}", param=param)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------- middleware


class _ApiKey:
    """Every /v1/ request must carry `Authorization: Bearer <key>` (/health and /metrics stay open)."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and not self._allowed(scope):
            error = ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>' with "
                "the key the server was started with",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            return await error.response()(scope, receive, send)
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.key)


class _BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413)


class _BodyLimit:
    """Refuse a body over `max_bytes` with 413: at once when its Content-Length says so, else as
    soon as that much has arrived. (Starlette's RequestBodyLimitMiddleware answers in plain text,
    which OpenAI clients cannot parse, and replaces any response the app gives.)"""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _body_too_large().response()(scope, receive, send)
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        await self.app(scope, limited, send)


def _body_too_large() -> ApiError:
    return ApiError(
        413,
        "the request body is too large for this server (see janus-like serve --max-body-mb)",
        code="request_too_large",
    )


class _Timing:
    """Request latencies and statuses into the metrics: from arrival to the response's last byte."""

    ENDPOINTS = (
        "/v1/chat/completions",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/models",
        "/health",
        "/metrics",
    )

    def __init__(self, app: ASGIApp, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), 499
        endpoint = next((e for e in self.ENDPOINTS if scope["path"].startswith(e)), "other")

        async def timed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.request_done(endpoint, status, time.perf_counter() - began)
