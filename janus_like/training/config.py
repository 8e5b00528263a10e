"""The training config: a YAML file read into nested dataclasses, checked key by key.

Every section is a dataclass whose fields are the accepted keys; an unknown key, a wrong type or
a value out of range is a `SettingsError` that names the key (as `section.key`) and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..configuration import check_compose_settings
from ..errors import SettingsError, is_int, is_number
from ..layout import TASKS
from . import precision

SEED_RANGE = (0, 2**32 - 1)  # numpy's legacy seeding (accelerate.set_seed) takes no more
# samples per process per micro-step, and micro-steps per step: each micro-batch is built whole in memory and a
# step's micro-batches are held together, so a mistyped size would grow memory until the machine gives out
MAX_BATCH_SIZE = 4096
MAX_GRAD_ACCUM = 1024


@dataclass
class ModelSettings:
    """Where the model comes from: exactly one of `path`, `parts` or `tiny`."""

    path: str | None = None  # a model directory (any layout of docs/ARCHITECTURE.md §5)
    parts: dict[str, str] | None = None  # {llm, vision, vq?}: JanusLikeForConditionalGeneration.from_parts
    compose: dict[str, int | float | str | bool] | None = (
        None  # with parts: JanusLikeConfig settings, e.g. {gen_image_size: 256, gen_head_hidden_size: 1024}
    )
    tiny: bool = False  # the tiny random model of janus_like.testing (smoke runs, tests)
    tiny_seed: int = 0
    dtype: str = "float32"  # weights dtype; mixed precision is `training.mixed_precision`
    attn_implementation: str | None = None  # sdpa (default), packed_sdpa, flash_attention_2, eager, flex

    def check(self) -> None:
        sources = [name for name, on in (("path", self.path), ("parts", self.parts), ("tiny", self.tiny)) if on]
        if len(sources) != 1:
            raise SettingsError(f"model: give exactly one of 'path', 'parts' or 'tiny: true', got {sources or 'none'}")
        if self.parts is not None:
            unknown = set(self.parts) - {"llm", "vision", "vq"}
            if unknown or not {"llm", "vision"} <= set(self.parts):
                raise SettingsError(
                    f"model.parts needs 'llm' and 'vision' (and optionally 'vq'), got {sorted(self.parts)}"
                )
        if self.compose is not None:
            if self.parts is None:
                raise SettingsError("model.compose applies to model.parts (a model directory has its own config)")
            check_compose_settings(self.compose, "model.compose")
        _range("model.tiny_seed", self.tiny_seed, *SEED_RANGE)
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if self.attn_implementation is not None:
            _choice(
                "model.attn_implementation",
                self.attn_implementation,
                ("sdpa", "packed_sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"),
            )


@dataclass
class DataSettings:
    """JSONL files of docs/ARCHITECTURE.md §6, how tasks are mixed, and how samples become rows."""

    files: list[str] = field(default_factory=list)  # paths or globs, relative to the config file
    mix: dict[str, float] | None = None  # task -> weight; default: in proportion to the records
    max_length: int = 2048  # longest sample, in tokens; and of a packed row unless row_length says
    packing: bool = True
    # a packed row's capacity (default max_length); positions restart for every sample, so with
    # packed_sdpa, where each sample attends alone, one long row a step packs with no padding
    row_length: int | None = None
    cfg_dropout: float = 0.1  # fraction of generation samples trained with the unconditional prompt
    cfg_image_dropout: float = 0.0  # of those, edits that lose their input images too (for image_cfg_scale)
    num_workers: int = 0

    def check(self) -> None:
        if not self.files:
            raise SettingsError("data.files: give at least one JSONL file (a path or glob relative to the config)")
        if self.mix is not None:
            for task, weight in self.mix.items():
                if task not in TASKS:
                    raise SettingsError(f"data.mix: unknown task {task!r}; accepted: {', '.join(TASKS)}")
                _range(f"data.mix.{task}", weight, 0.0, None)
            if sum(self.mix.values()) <= 0:
                raise SettingsError("data.mix: the weights must add up to more than 0")
        _range("data.max_length", self.max_length, 8, None)
        if self.row_length is not None:
            _range("data.row_length", self.row_length, self.max_length, None)
        _range("data.cfg_dropout", self.cfg_dropout, 0.0, 1.0)
        _range("data.cfg_image_dropout", self.cfg_image_dropout, 0.0, 1.0)
        _range("data.num_workers", self.num_workers, 0, 64)


@dataclass
class EvalSettings:
    """Held-out loss every `every` steps over the first `batches` micro-batches of `files`."""

    files: list[str] = field(default_factory=list)
    every: int = 0  # 0: no evaluation
    batches: int = 8

    def check(self) -> None:
        _range("eval.every", self.every, 0, None)
        _range("eval.batches", self.batches, 1, None)
        if self.every and not self.files:
            raise SettingsError("eval.files: give the held-out JSONL files when eval.every > 0")


@dataclass
class OptimizerSettings:
    """AdamW (decoupled weight decay; biases and norms are not decayed)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0

    def check(self) -> None:
        _range("optimizer.lr", self.lr, 0.0, 1.0, low_open=True)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise SettingsError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas}")
        _range("optimizer.eps", self.eps, 0.0, 1.0, low_open=True)
        _range("optimizer.weight_decay", self.weight_decay, 0.0, 10.0)


@dataclass
class ScheduleSettings:
    """Learning-rate schedule (transformers.get_scheduler) with linear warmup."""

    name: str = "cosine"
    warmup_steps: int = 0

    def check(self) -> None:
        _choice("schedule.name", self.name, ("constant", "constant_with_warmup", "linear", "cosine"))
        _range("schedule.warmup_steps", self.warmup_steps, 0, None)


@dataclass
class TrainingSettings:
    """The loop: sizes, precision, clipping, what to do with a non-finite loss."""

    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # samples per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    mixed_precision: str | None = None  # auto, no, bf16, fp16 (training/precision.py); none: the launcher's, else no
    gradient_checkpointing: bool = False
    nonfinite: str = "skip"  # skip the step, or stop the run
    max_nonfinite: int = 10  # stop after this many skipped steps in a row

    def check(self) -> None:
        _range("training.max_steps", self.max_steps, 1, None)
        _range("training.batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _range("training.grad_accum", self.grad_accum, 1, MAX_GRAD_ACCUM)
        _range("training.grad_clip", self.grad_clip, 0.0, None)
        if self.mixed_precision is not None:
            _choice("training.mixed_precision", self.mixed_precision, precision.CHOICES)
        _choice("training.nonfinite", self.nonfinite, ("skip", "stop"))
        _range("training.max_nonfinite", self.max_nonfinite, 1, None)


@dataclass
class LoggingSettings:
    every: int = 10  # steps between log lines / tracker points
    tensorboard: bool = True
    save_every: int = 500  # steps between checkpoints (and one at the end)
    keep: int = 3  # checkpoints kept (oldest deleted); 0 keeps all

    def check(self) -> None:
        _range("logging.every", self.every, 1, None)
        _range("logging.save_every", self.save_every, 1, None)
        _range("logging.keep", self.keep, 0, None)


@dataclass
class LoraSettings:
    """Low-rank adapters on the Linear layers whose names match `targets` (glob); r = 0: off.
    The adapted weights stay frozen; `stage` / `trainable` choose what else trains (nothing by default)."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["language_model.*_proj"])  # every Llama projection

    def check(self) -> None:
        _range("lora.r", self.r, 0, 4096)
        _range("lora.alpha", self.alpha, 0.0, None, low_open=True)
        _range("lora.dropout", self.dropout, 0.0, 0.99)
        if self.r and not self.targets:
            raise SettingsError("lora.targets: give at least one glob pattern of Linear layer names")


@dataclass
class TrainConfig:
    """The whole YAML file."""

    output_dir: str = "runs/janus_like"
    seed: int = 0
    stage: int | None = None  # Janus stage preset 1, 2 or 3 (see stages.py); none: train everything but the VQ
    trainable: list[str] = field(default_factory=list)  # extra glob patterns of parameter names to train
    frozen: list[str] = field(default_factory=list)  # glob patterns to freeze (applied last)
    lora: LoraSettings = field(default_factory=LoraSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    base_dir: str = field(default=".", metadata={"internal": True})  # the config file's folder

    def check(self) -> None:
        _range("seed", self.seed, *SEED_RANGE)
        if self.stage is not None:
            _choice("stage", self.stage, (1, 2, 3))
        for section in (
            self.model,
            self.data,
            self.eval,
            self.optimizer,
            self.schedule,
            self.training,
            self.logging,
            self.lora,
        ):
            section.check()

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else Path(os.path.normpath(Path(self.base_dir) / p))

    def model_location(self, path: str) -> Path:
        """`model.path` or a `model.parts` entry: under the config's folder if it is there, else as
        given (relative to the working directory, or a hub id), for `train` and `--check-data` alike."""
        under = self.resolve(path)
        return under if under.exists() else Path(os.path.expanduser(path))

    def check_context(self, context: int) -> None:
        """Settings that must fit the model: `data.max_length` within its context (positions)."""
        if self.data.max_length > context:
            raise SettingsError(
                f"data.max_length = {self.data.max_length} is out of range; the model's context holds {context}"
            )

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("base_dir")
        return out


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read and check a training YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise SettingsError(f"{path} is not UTF-8 text (byte {e.start} cannot be decoded); save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise SettingsError(_yaml_problem(path, e)) from e
    config = config_from_dict(raw)
    config.base_dir = str(path.resolve().parent)
    return config


def _yaml_problem(path: Path, error: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line that keeps the line and column."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    what = f"{problem} ({context})" if context else problem
    return f"{where}: not valid YAML: {' '.join(what.split())}"


def config_from_dict(raw: Any) -> TrainConfig:
    """A plain dict (parsed YAML) -> a checked TrainConfig."""
    config = _build(TrainConfig, raw, "")
    config.check()
    return config


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise SettingsError(f"{where or 'the config'} must be a mapping of keys to values, got {raw!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values = {}
    for key, value in raw.items():
        name = f"{where}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {where}{close[0]}?)" if close else ""
            raise SettingsError(f"unknown config key {name!r}{hint}; accepted here: {', '.join(fields)}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            values[key] = _build(kind, value or {}, f"{name}.")
        else:
            values[key] = _coerce(value, kind, name)
    return cls(**values)


def _coerce(value: Any, kind, name: str):
    """Check `value` against a field's type hint; ints are accepted where floats are."""
    options = get_args(kind) if get_origin(kind) in (types.UnionType, typing.Union) else (kind,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = get_origin(option) or option
        if origin is float and is_number(value):
            if not math.isfinite(value):  # YAML's .nan / .inf would pass every range check below
                raise SettingsError(f"{name} = {value} is not accepted; give a finite number")
            return float(value)
        if origin is int and is_int(value):
            return value
        if origin is bool and isinstance(value, bool):
            return value
        if origin is str and isinstance(value, str):
            return value
        if origin is list and isinstance(value, (list, str)):
            items = [value] if isinstance(value, str) else value
            (item_kind,) = get_args(option)
            return [_coerce(v, item_kind, f"{name}[{i}]") for i, v in enumerate(items)]
        if origin is dict and isinstance(value, dict):
            _, value_kind = get_args(option)
            return {str(k): _coerce(v, value_kind, f"{name}.{k}") for k, v in value.items()}
    accepted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    hint = _float_hint(value) if float in options else ""
    raise SettingsError(f"{name} must be {accepted}, got {value!r}{hint}")


def _float_hint(value: Any) -> str:
    """How to write a number that YAML read as a string (PyYAML takes `1e-4`, without a dot, as text)."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    fixed = re.sub(r"^([+-]?\d+)([eE])", r"\1.0\2", value.strip())
    return (
        f"; write {fixed} (YAML reads an exponent without a dot as text)"
        if fixed != value.strip()
        else f"; write {fixed} without quotes"
    )


def _range(name: str, value, low, high, low_open: bool = False) -> None:
    above_low = value > low if low_open else value >= low
    if not above_low or (high is not None and value > high):
        bracket = "(" if low_open else "["
        top = "∞" if high is None else high
        raise SettingsError(f"{name} = {value} is out of range; accepted: {bracket}{low}, {top}]")


def _choice(name: str, value, accepted: tuple) -> None:
    if value not in accepted:
        raise SettingsError(f"{name} = {value!r} is not accepted; choose one of {', '.join(map(str, accepted))}")
