"""The OpenAI API's request bodies (the fields this server takes) and its response objects.

Request models forbid unknown fields and coerce nothing (a string is no number), so a misspelt
or wrong-typed field is a 400 that names it, not a silently ignored setting. Ranges that the
library already checks (temperature, top_p, seed, stop, guidance) are left to GenerationSettings,
whose messages name the accepted range."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..generation.settings import MAX_INTERLEAVED_IMAGES, MAX_SCALE, MAX_TEMPERATURE, MIN_TEMPERATURE

MAX_CHOICES = 8  # `n` of a chat completion: each choice is a generation of its own
MAX_IMAGES = 10  # `n` of an image request (OpenAI's own limit); each image is a batch row, twice with guidance


# what each sampling field accepts, as GenerationSettings checks it (named in type errors too)
TEMPERATURE = f"0 (greedy) or a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]"
TOP_P, TOP_K, SEED = "a number in (0, 1]", "an integer >= 1", "an integer in [0, 2**63 - 1]"
SCALE = f"a number in [0, {MAX_SCALE:g}] (1: no guidance)"
BOOLEAN = "true or false"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool = Field(False, description=BOOLEAN)


class Message(_Body):
    """One chat message; its content parts are checked when they are turned into the processor's items."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Any = Field(description="a string or a list of {'type': 'text'} and {'type': 'image_url'} parts")
    name: str | None = None


class ChatCompletionRequest(_Body):
    """POST /v1/chat/completions. `modalities: ["text", "image"]` asks for interleaved text and
    images; `top_k`, `repetition_penalty`, `cfg_scale`, `image_temperature`, `max_images` and
    `ignore_eos` are extras."""

    model: str = Field(description="the served model's id (GET /v1/models)")
    messages: list[Message] = Field(min_length=1, description="a non-empty list of messages")
    max_tokens: int | None = Field(None, ge=1, description="an integer >= 1 (the model's context bounds it)")
    max_completion_tokens: int | None = Field(None, ge=1, description="an integer >= 1 (the model's context bounds it)")
    temperature: float | None = Field(None, description=TEMPERATURE)
    top_p: float | None = Field(None, description=TOP_P)
    seed: int | None = Field(None, description=SEED)
    stop: Any = Field(None, description="a string or a list of strings")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description=f"an integer in [1, {MAX_CHOICES}]")
    stream: bool = Field(False, description=BOOLEAN)
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "image"]] | None = Field(
        None, description='["text"] (an answer) or ["text", "image"] (interleaved text and images)'
    )
    user: str | None = None  # accepted as OpenAI clients send it; unused
    top_k: int | None = Field(None, description=TOP_K)
    repetition_penalty: float | None = Field(None, description=f"a number in (0, {MAX_SCALE:g}] (1: no penalty)")
    cfg_scale: float | None = Field(None, description=SCALE)
    image_temperature: float | None = Field(None, description=f"the images' own; {TEMPERATURE} (default: temperature)")
    max_images: int | None = Field(None, description=f"an integer in [0, {MAX_INTERLEAVED_IMAGES}]")
    ignore_eos: bool = Field(False, description=BOOLEAN)

    @property
    def interleaved(self) -> bool:
        return "image" in (self.modalities or ())


class ImageGenerationRequest(_Body):
    """POST /v1/images/generations; `cfg_scale`, `cfg_plausibility`, `seed`, `temperature`, `top_k`,
    `top_p` are extras."""

    prompt: str = Field(description="a non-empty string")
    model: str | None = Field(None, description="the served model's id (GET /v1/models)")
    n: int = Field(1, ge=1, le=MAX_IMAGES, description=f"an integer in [1, {MAX_IMAGES}]")
    size: str | None = Field(None, description="the model's size (WIDTHxHEIGHT) or 'auto'")
    response_format: Literal["b64_json", "url"] | None = Field(None, description="b64_json")
    output_format: Literal["png"] | None = Field(None, description="png")
    user: str | None = None
    cfg_scale: float | None = Field(None, description=SCALE)
    cfg_plausibility: float | None = Field(None, description="a number in [0, 1] (0: plain guidance)")
    seed: int | None = Field(None, description=SEED)
    temperature: float | None = Field(None, description=TEMPERATURE)
    top_k: int | None = Field(None, description=TOP_K)
    top_p: float | None = Field(None, description=TOP_P)


class ImageEditRequest(ImageGenerationRequest):
    """POST /v1/images/edits' form fields besides the image files; `image_cfg_scale` is an extra."""

    model_config = ConfigDict(extra="forbid", strict=False)  # form fields arrive as strings
    image_cfg_scale: float | None = Field(None, description=SCALE)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(id_: str, model: str, choices: list[dict], usage_: dict) -> dict:
    """A `chat.completion` object; `choices` are (index, content, finish_reason) dicts."""
    return {
        "id": id_,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": c["index"],
                "message": {"role": "assistant", "content": c["content"]},
                "finish_reason": c["finish_reason"],
                "logprobs": None,
            }
            for c in choices
        ],
        "usage": usage_,
    }


def chat_chunk(
    id_: str,
    model: str,
    created: int,
    index: int | None = None,
    delta: dict | None = None,
    finish_reason: str | None = None,
    usage_: dict | None = None,
) -> dict:
    """A `chat.completion.chunk`: one choice's delta, or (index None) the closing usage chunk."""
    choices = (
        []
        if index is None
        else [{"index": index, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}]
    )
    chunk = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def images_response(b64_pngs: list[str], size: str) -> dict:
    return {
        "created": int(time.time()),
        "data": [{"b64_json": b} for b in b64_pngs],
        "output_format": "png",
        "size": size,
    }


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape, which its clients parse into their exceptions."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
