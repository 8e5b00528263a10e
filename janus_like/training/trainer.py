"""The training loop on `accelerate`: one CPU, one GPU, or DDP/FSDP over many GPUs and nodes.

Each optimizer step takes `grad_accum` micro-batches per process. The loss is a sum over target
tokens divided by the target count of the whole step (all processes, all micro-batches), so
n processes with batch b, or accumulation, give the same update as one process with batch n·b.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, is_tensorboard_available, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..checkpoint.options import set_attention
from ..configuration import DTYPES
from ..errors import CheckpointError, DataError, JanusLikeError, SettingsError, is_int, one_line
from ..fileio import MANIFEST, check_output_folder, output_set, plain_modes, unrecorded, write_json
from ..modeling import JanusLikeForConditionalGeneration
from ..processor import JanusLikeProcessor
from ..testing import tiny_model
from . import checkpoints, lora, packed_attention, precision  # noqa: F401  (registers model.attn_implementation packed_sdpa)
from .config import TrainConfig
from .data import DataIndex, MicroBatches, Mixture, identity, resolve_files
from .plots import plot_losses
from .stages import apply_stage

OUTPUTS = ("final", "metrics.json", "loss_curve.png")  # what a finished run writes into output_dir
MODEL_INPUTS = ("input_ids", "modality", "labels", "attention_mask", "position_ids", "pixel_values", "gen_pixel_values")


class TrainingError(JanusLikeError):
    """Training cannot go on (for example the loss stayed non-finite)."""


def build_model(config: TrainConfig) -> tuple[torch.nn.Module, JanusLikeProcessor]:
    """The model and processor the config names: a directory, parts to compose, or the tiny test model."""
    settings = config.model
    dtype = DTYPES[settings.dtype]
    if settings.tiny:
        model, processor = tiny_model(seed=settings.tiny_seed)
        model = model.to(dtype)
    elif settings.parts is not None:
        parts = {k: str(config.model_location(v)) for k, v in settings.parts.items()}
        model, processor = JanusLikeForConditionalGeneration.from_parts(
            **parts, **(settings.compose or {}), dtype=dtype, return_processor=True
        )
    else:
        path = config.model_location(settings.path)
        model = JanusLikeForConditionalGeneration.from_pretrained(path, dtype=dtype)
        processor = JanusLikeProcessor.from_pretrained(path, model.config)
    if settings.attn_implementation:  # after loading: every layout and composed parts take it alike
        set_attention(model, settings.attn_implementation, "model.attn_implementation")
    return model, processor


@dataclass
class TrainerState:
    """What a checkpoint records besides tensors: where the data stream is, counters, history."""

    step: int = 0
    global_micro_batch: int = 0  # samples per global micro-batch (processes × batch_size)
    skipped_records: int = 0
    nonfinite_steps: int = 0
    real_tokens: int = 0
    history: list[dict] = field(default_factory=list)
    eval_history: list[dict] = field(default_factory=list)
    grad_accum: int | None = None  # micro-batches per step; None: a checkpoint from before it was recorded

    @classmethod
    def from_saved(cls, saved) -> TrainerState:
        """A checkpoint's trainer_state.json, checked field by field: a damaged one must not resume half-right."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(saved, dict):
            raise CheckpointError(f"{checkpoints.STATE_FILE} holds {type(saved).__name__}, expected a JSON object")
        missing = [name for name in names if name not in saved and name != "grad_accum"]
        unknown = [name for name in saved if name not in names]
        if missing:
            raise CheckpointError(f"{checkpoints.STATE_FILE} lacks {', '.join(missing)}")
        if unknown:
            raise CheckpointError(
                f"{checkpoints.STATE_FILE} has unknown keys {', '.join(unknown)}; accepted: {', '.join(names)}"
            )
        for name, value in saved.items():
            if name.endswith("history"):
                ok, wanted = isinstance(value, list) and all(isinstance(v, dict) for v in value), "a list of objects"
            else:
                count = is_int(value) and value >= 0
                ok, wanted = count or (name == "grad_accum" and value is None), "a count (an integer ≥ 0)"
            if not ok:
                raise CheckpointError(f"{checkpoints.STATE_FILE}: {name} = {value!r} is not {wanted}")
        return cls(**saved)


class Trainer:
    """Build everything from a TrainConfig, then `fit()`."""

    def __init__(self, config: TrainConfig, resume: str | None = None, skip_bad_records: bool = False):
        self.config, self.skip_bad = config, skip_bad_records
        self._consecutive_nonfinite = 0
        cfg, tcfg = config, config.training
        self.output_dir = cfg.resolve(cfg.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        # cheap checks first: a wrong path or a damaged checkpoint should not wait for a model to load
        check_output_folder(self.checkpoint_root, "output_dir =")  # found now, not at the first checkpoint save
        theirs = unrecorded(self.output_dir, list(OUTPUTS))
        if theirs:  # a finished run replaces them: only an earlier run's own (listed in its manifest) may go
            raise SettingsError(
                f"output_dir = {self.output_dir} holds {', '.join(map(str, theirs))}, which this run "
                f"would replace but no earlier janus-like run there wrote (its {MANIFEST} does not "
                "list them); move them away or choose another output_dir"
            )
        earlier = checkpoints.list_checkpoints(self.checkpoint_root)
        if resume is None and earlier:  # a fresh run would mix its checkpoints with these, and prune by name
            raise SettingsError(
                f"output_dir = {self.output_dir} holds checkpoints of an earlier run (the latest: "
                f"{earlier[-1].name}); continue it with --resume, or start afresh in a new "
                f"output_dir (or after removing {self.checkpoint_root})"
            )
        resume_from = checkpoints.resolve_resume(self.checkpoint_root, resume) if resume is not None else None
        saved = self._read_checkpoint_state(resume_from) if resume_from is not None else None
        train_files = resolve_files(cfg.data.files, cfg.base_dir)
        eval_files = resolve_files(cfg.eval.files, cfg.base_dir) if cfg.eval.every else []
        use_tb = cfg.logging.tensorboard and is_tensorboard_available()
        on_cpu = not _has_accelerator()
        self.accelerator = acc = Accelerator(
            cpu=on_cpu,  # without it accelerate treats torchrun on CPUs as one process
            mixed_precision=precision.resolve(tcfg.mixed_precision, on_cpu),
            log_with="tensorboard" if use_tb else None,
            project_dir=str(self.output_dir),
            step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever the process count
            # every part of ours runs in every micro-batch (run_all_parts), but a mixture-of-experts decoder
            # may leave an expert without tokens
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        if acc.gradient_accumulation_steps != 1:  # `accelerate launch --gradient_accumulation_steps K` sets it
            # the trainer accumulates itself (normalised by the step's target count); accelerate's would divide
            # every gradient by K once more and accumulate nothing
            raise SettingsError(
                f"accelerate's gradient_accumulation_steps = {acc.gradient_accumulation_steps} is not "
                "used by janus-like train; set training.grad_accum in the config instead and launch "
                "without --gradient_accumulation_steps"
            )
        self.state = TrainerState(global_micro_batch=acc.num_processes * tcfg.batch_size, grad_accum=tcfg.grad_accum)
        if saved is not None:
            self._check_resumable(resume_from, saved)
        self.train_index = DataIndex(train_files, skip_bad_records, progress=acc.is_main_process)
        eval_index = DataIndex(eval_files) if eval_files else None
        self.state.skipped_records = len(self.train_index.bad)
        set_seed(cfg.seed)
        self._build_model_and_optimizer()
        self.train_data = self._micro_batches(self.train_index, cfg.data.mix)
        self.eval_data = self._micro_batches(eval_index, None) if eval_index else None
        if saved is not None:
            self._resume(resume_from, saved)
        if acc.is_main_process:
            for message in self.train_index.bad:
                tqdm.write(f"skipped bad record at {message}", file=sys.stderr)
        if use_tb:
            acc.init_trackers("tensorboard", config=_flat_hparams(cfg.to_dict()))

    # ------------------------------------------------------------------ setup helpers

    def _build_model_and_optimizer(self) -> None:
        """Model with the stage's trainable set, AdamW (no decay on biases and norms), LR schedule; prepared."""
        cfg, tcfg = self.config, self.config.training
        model, self.processor = build_model(cfg)
        cfg.check_context(model.config.text_config.max_position_embeddings)
        if cfg.lora.r:
            lora.add_adapters(model, cfg.lora)
        self.trainable_names = apply_stage(model, cfg.stage, cfg.trainable, cfg.frozen, adapters=bool(cfg.lora.r))
        if self.accelerator.mixed_precision in ("bf16", "fp16"):
            # fp32 master copies of what trains on a half-precision model: AdamW steps on bf16 weights
            # round away, and autocast runs the matmuls in half precision anyway
            for param in model.parameters():
                if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
                    param.data = param.data.float()
        if self.accelerator.is_main_process:
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in model.parameters())
            tqdm.write(
                f"training {n_train / 1e6:.2f}M of {n_all / 1e6:.2f}M parameters ({n_train / n_all:.2%}), "
                f"mixed precision {self.accelerator.mixed_precision}"
            )
        if tcfg.gradient_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.optimizer.weight_decay},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ],
            lr=cfg.optimizer.lr,
            betas=tuple(cfg.optimizer.betas),
            eps=cfg.optimizer.eps,
        )
        scheduler = get_scheduler(
            cfg.schedule.name, optimizer, num_warmup_steps=cfg.schedule.warmup_steps, num_training_steps=tcfg.max_steps
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self._set_train_mode()

    def _micro_batches(self, index: DataIndex, mix) -> MicroBatches:
        cfg, acc = self.config, self.accelerator
        return MicroBatches(
            index,
            Mixture(index, mix, cfg.seed),
            self.processor,
            batch_size=cfg.training.batch_size,
            world_size=acc.num_processes,
            rank=acc.process_index,
            max_length=cfg.data.max_length,
            row_length=cfg.data.row_length,
            packing=cfg.data.packing,
            cfg_dropout=cfg.data.cfg_dropout,
            cfg_image_dropout=cfg.data.cfg_image_dropout,
            seed=cfg.seed,
        )

    def _set_train_mode(self) -> None:
        self.model.train()
        self.accelerator.unwrap_model(self.model).vq.eval()  # always frozen; eval mode keeps its EMA codebook still

    def _read_checkpoint_state(self, path: Path) -> TrainerState:
        try:
            return TrainerState.from_saved(checkpoints.read_state(path))
        except CheckpointError as e:
            raise checkpoints.damaged(self.checkpoint_root, path, str(e)) from e

    def _check_resumable(self, path: Path, saved: TrainerState) -> None:
        """The run must continue the checkpoint's data stream (same samples per step), and not end before it."""
        tcfg, now = self.config.training, self.state
        if saved.global_micro_batch != now.global_micro_batch:
            raise SettingsError(
                f"--resume: the checkpoint was trained with {saved.global_micro_batch} samples per global "
                f"micro-batch (processes × training.batch_size), this run has {now.global_micro_batch}; "
                "keep them equal to continue the same data stream"
            )
        if saved.grad_accum is not None and saved.grad_accum != now.grad_accum:
            raise SettingsError(
                f"--resume: the checkpoint was trained with training.grad_accum = {saved.grad_accum}, this run "
                f"has {now.grad_accum}; keep them equal to continue the same data stream"
            )
        if tcfg.max_steps < saved.step:
            raise SettingsError(
                f"training.max_steps = {tcfg.max_steps} is below the checkpoint's step {saved.step} "
                f"({path}); accepted: at least {saved.step}"
            )
        try:
            checkpoints.check_random_states(path, self.accelerator.process_index)
        except CheckpointError as e:
            raise checkpoints.damaged(self.checkpoint_root, path, str(e)) from e

    def _resume(self, path: Path, saved: TrainerState) -> None:
        try:
            checkpoints.check_saved_weights(self.accelerator.unwrap_model(self.model), path)
            self.accelerator.load_state(str(path))
        except CheckpointError as e:
            raise checkpoints.damaged(self.checkpoint_root, path, str(e)) from e
        except checkpoints.LOAD_ERRORS as e:
            raise checkpoints.damaged(self.checkpoint_root, path, f"cannot load it ({one_line(e)})") from e
        saved.grad_accum = self.state.grad_accum  # known from now on
        self.state = saved
        if self.accelerator.is_main_process:
            tqdm.write(f"resumed from {path} at step {self.state.step}")

    def _loader(self, dataset: MicroBatches, start: int, stop: int):
        """Micro-batches start..stop-1, built in `data.num_workers` background processes."""
        return iter(
            torch.utils.data.DataLoader(
                dataset,
                batch_size=None,
                sampler=range(start, stop),
                collate_fn=identity,
                # its own RNG: the global one stays exact on resume
                num_workers=self.config.data.num_workers,
                generator=torch.Generator(),
            )
        )

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainerState:
        cfg, acc, state = self.config, self.accelerator, self.state
        accum, max_steps = cfg.training.grad_accum, cfg.training.max_steps
        batches = self._loader(self.train_data, state.step * accum, max_steps * accum)
        with tqdm(
            total=max_steps, initial=state.step, desc="training", unit="step", disable=not acc.is_main_process
        ) as bar:  # closed on errors too
            while state.step < max_steps:
                started = time.perf_counter()  # tokens/s counts data loading too, not eval or saving
                window = [next(batches) for _ in range(accum)]
                metrics = self.train_step(window)
                real_tokens = metrics.pop("real_tokens")
                metrics["tokens_per_s"] = real_tokens / (time.perf_counter() - started)
                state.step += 1
                state.real_tokens += real_tokens
                state.history.append({"step": state.step, **metrics})
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                if state.step % cfg.logging.every == 0 or state.step == max_steps:
                    acc.log({k: v for k, v in metrics.items() if v is not None}, step=state.step)
                if self.eval_data is not None and (state.step % cfg.eval.every == 0 or state.step == max_steps):
                    eval_loss = self.evaluate()
                    state.eval_history.append({"step": state.step, "loss": eval_loss})
                    acc.log({"eval_loss": eval_loss}, step=state.step)
                    bar.write(f"step {state.step}: eval loss {eval_loss:.4f}")
                if state.step % cfg.logging.save_every == 0 or state.step == max_steps:
                    self.save_checkpoint()
        self.finish()
        return state

    def train_step(self, window: list[dict]) -> dict:
        """One optimizer step over this process's micro-batches of the step."""
        acc, tcfg = self.accelerator, self.config.training
        self._handle_bad_records(window)
        counts = torch.tensor(
            [[b["targets"], b["real_tokens"], b["input_ids"].numel()] for b in window],
            dtype=torch.float64,
            device=acc.device,
        ).sum(0)
        counts = acc.reduce(counts, "sum")
        n_global = counts[0].clamp_min(1)
        sums = torch.zeros(5, dtype=torch.float64, device=acc.device)  # loss, text, image sums; text, image counts
        for i, batch in enumerate(window):
            inputs = {k: v.to(acc.device) for k, v in batch.items() if k in MODEL_INPUTS}
            sync = acc.no_sync(self.model) if i < len(window) - 1 else contextlib.nullcontext()
            with sync:
                # every part runs in every micro-batch (those without data add 0): FSDP needs it, since it gathers
                # a part's weights as it runs, and one process, DDP and FSDP then step alike (a part without
                # data this step gets a zero gradient, so AdamW moves it by its momentum, on every layout)
                out = self.model(**inputs, run_all_parts=True)
                n = out.text_tokens + out.image_tokens
                local_sum = out.loss * n
                # DDP averages gradients over processes: scale so that the sum over processes is the global mean
                scaled = local_sum * acc.num_processes / n_global if n > 0 else out.last_hidden_state.sum() * 0.0
                acc.backward(scaled.to(torch.float32))
            sums += torch.stack(
                [
                    local_sum.detach(),
                    out.text_loss.detach() * out.text_tokens,
                    out.image_loss.detach() * out.image_tokens,
                    out.text_tokens,
                    out.image_tokens,
                ]
            ).double()
        sums = acc.reduce(sums, "sum")
        loss = (sums[0] / n_global).item()
        # all parameters, frozen ones included (no grad, no part in the norm): FSDP needs the model's own list
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), tcfg.grad_clip or math.inf)
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        # fp16's loss scaler skips overflowing steps itself: there only the loss decides
        finite = math.isfinite(loss) and (acc.mixed_precision == "fp16" or math.isfinite(grad_norm))
        lr = self.scheduler.get_last_lr()[0]  # this step's: read before the scheduler moves to the next
        if finite:
            self.optimizer.step()
            self._consecutive_nonfinite = 0
        else:
            self._nonfinite(loss, grad_norm)
        with warnings.catch_warnings():  # the schedule follows steps, skipped ones too: torch's order warning is moot
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before", UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": loss,
            "text_loss": (sums[1] / sums[3]).item() if sums[3] > 0 else None,  # None: no such targets this step
            "image_loss": (sums[2] / sums[4]).item() if sums[4] > 0 else None,
            "lr": lr,
            "grad_norm": grad_norm,
            "padding_fraction": 1.0 - counts[1].item() / counts[2].item(),
            "skipped_step": not finite,
            "real_tokens": int(counts[1].item()),  # all processes
        }

    def _nonfinite(self, loss: float, grad_norm: float) -> None:
        """Non-finite loss or gradients: skip this update, or stop, as `training.nonfinite` says."""
        self.state.nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        tcfg = self.config.training
        what = f"step {self.state.step + 1}: non-finite loss {loss} / grad norm {grad_norm}"
        last = checkpoints.latest(self.checkpoint_root)
        where = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
        if tcfg.nonfinite == "stop":
            raise TrainingError(f"{what}; stopped (training.nonfinite = stop); {where}")
        if self._consecutive_nonfinite >= tcfg.max_nonfinite:
            raise TrainingError(
                f"{what}; {self._consecutive_nonfinite} steps in a row "
                f"(training.max_nonfinite = {tcfg.max_nonfinite}); stopped; {where}"
            )
        if self.accelerator.is_main_process:
            tqdm.write(f"{what}; update skipped (training.nonfinite = skip)", file=sys.stderr)

    def _handle_bad_records(self, window: list[dict]) -> None:
        """Count and report bad records; without --skip-bad-records stop at the first, on every process."""
        acc = self.accelerator
        messages = [m for b in window for m in b["bad"]]
        total = int(acc.reduce(torch.tensor(len(messages), device=acc.device), "sum").item())
        if not total:
            return
        if not self.skip_bad:
            first = messages[0] if messages else "another process met a bad record"
            raise DataError(
                f"bad record at {first} (use --skip-bad-records to skip such records; "
                f"`janus-like train CONFIG --check-data` lists them all)"
            )
        self.state.skipped_records += total
        for message in messages:
            tqdm.write(f"skipped bad record at {message}", file=sys.stderr)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean target loss over the first `eval.batches` micro-batches of the eval files."""
        acc = self.accelerator
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=acc.device)
        for batch in self._loader(self.eval_data, 0, self.config.eval.batches):
            self._handle_bad_records([batch])  # as in training: stop, or skip and count with --skip-bad-records
            inputs = {k: v.to(acc.device) for k, v in batch.items() if k in MODEL_INPUTS}
            out = self.model(**inputs, run_all_parts=True)
            n = out.text_tokens + out.image_tokens
            sums += torch.stack([out.loss * n, n]).double()
        self._set_train_mode()
        sums = acc.reduce(sums, "sum")
        if sums[1] == 0:
            raise DataError(
                f"eval: the first {self.config.eval.batches} eval micro-batches hold no target tokens "
                "(every record was skipped as bad?); fix eval.files"
            )
        return (sums[0] / sums[1]).item()

    # ------------------------------------------------------------------ outputs

    def save_checkpoint(self) -> Path:
        state = self.state.__dict__.copy()
        return checkpoints.save(
            self.accelerator, self.checkpoint_root, self.state.step, state, self.config.logging.keep
        )

    def finish(self) -> None:
        """The trained model as a loadable directory (`final/`), metrics.json and loss_curve.png."""
        acc = self.accelerator
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            if self.config.lora.r:  # plain weights: final/ loads without peft
                state_dict = lora.merged_state_dict(state_dict, lora.scalings(acc.unwrap_model(self.model)))
            dtype = DTYPES[self.config.model.dtype]  # fp32 master copies go back to the model's dtype
            state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
            # as an output set: the files an earlier run wrote there are replaced, nothing else is touched
            with output_set(self.output_dir, "output_dir =") as tmp:
                acc.unwrap_model(self.model).save_pretrained(tmp / "final", state_dict=state_dict)
                self.processor.save_pretrained(tmp / "final")
                plain_modes(tmp / "final")  # a model to share: safetensors writes owner-only files
                write_json(
                    tmp / "metrics.json",
                    {
                        "history": self.state.history,
                        "eval_history": self.state.eval_history,
                        "skipped_records": self.state.skipped_records,
                        "nonfinite_steps": self.state.nonfinite_steps,
                        "real_tokens": self.state.real_tokens,
                    },
                )
                plot_losses(self.state.history, self.state.eval_history, tmp / "loss_curve.png")
        # every process tears the process group down together: one leaving while another still
        # writes closed gloo's connections under it (an abort at exit, seen under FSDP)
        acc.wait_for_everyone()
        acc.end_training()


def _has_accelerator() -> bool:
    """A GPU (or other torch accelerator) is present."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def _flat_hparams(tree: dict, prefix: str = "") -> dict:
    """Nested config -> flat scalars for TensorBoard's hparams (lists and None become strings)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_hparams(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
