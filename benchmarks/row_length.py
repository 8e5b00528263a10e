"""Training step time of the default model's recipe by packed row length, attention and precision.

With SDPA a packed row costs its whole length² in attention, whatever samples it holds (the
masked-out blocks are still computed: training/packing.py), so shorter rows that still fit every
record make the same step of the same 24 samples cheaper; too short, and padding eats the gain.
Each sample attends only to itself either way, so the training is the same up to rounding.
`packed_sdpa` (training/packed_attention.py) computes only each sample's own length², in float32.

    python benchmarks/row_length.py [--lengths 512 320 256] [--attention sdpa packed_sdpa]
        [--precision bf16 no] [--steps 20] [--rounds 2]

Runs `janus-like train`'s Trainer on the recipe's stage-1 settings (batch 24, its data mix; bf16
unless --precision says otherwise: a CPU without AMX or AVX512-BF16 runs bf16 tens of times slower
than `no`, float32) from the embedded default model, on freshly written shapes records; rounds
alternate the settings, so a machine that speeds up or slows down meanwhile touches each alike.
Prints seconds a step, the padding fraction and each setting's ratio to the first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs"))

from shapes_data import write_shapes  # noqa: E402

from janus_like.testing import reset_accelerate  # noqa: E402
from janus_like.training.config import load_config  # noqa: E402
from janus_like.training.trainer import Trainer  # noqa: E402

WARMUP_STEPS = 5  # the first steps allocate and warm caches: not timed


def time_steps(
    work: Path, data: Path, row_length: int, attention: str, precision: str, steps: int
) -> tuple[float, float]:
    """(median seconds a step, mean padding fraction) of `steps` timed steps at rows of `row_length`."""
    recipe = yaml.safe_load((ROOT / "apps" / "default_model" / "recipe.yaml").read_text())
    settings = recipe["train"]
    max_length = min(row_length, settings["data"]["max_length"])  # the longest sample stays the recipe's
    settings["data"].update(files=[str(data / "train.jsonl")], max_length=max_length, row_length=row_length)
    settings["training"].update(max_steps=WARMUP_STEPS + steps, mixed_precision=precision)
    model = ROOT / "janus_like" / "default_model"
    run = f"{row_length}-{attention}-{precision}"
    settings.update(output_dir=str(work / f"run-{run}"), model={"path": str(model), "attn_implementation": attention})
    config = work / f"rows-{run}.yaml"
    config.write_text(yaml.safe_dump(settings))
    reset_accelerate()  # accelerate's process-wide state would refuse another precision
    trainer = Trainer(load_config(config))
    batches = trainer._loader(trainer.train_data, 0, WARMUP_STEPS + steps)
    seconds, padding = [], []
    for step in range(WARMUP_STEPS + steps):
        window = [next(batches)]
        started = time.perf_counter()
        metrics = trainer.train_step(window)
        if step >= WARMUP_STEPS:
            seconds.append(time.perf_counter() - started)
            padding.append(metrics["padding_fraction"])
    return statistics.median(seconds), statistics.mean(padding)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 320, 256])
    p.add_argument("--attention", nargs="+", default=["sdpa"], choices=["sdpa", "packed_sdpa"])
    p.add_argument("--precision", nargs="+", default=["bf16"], choices=["bf16", "no"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the recipe's kinds of records in its proportions, few of each: row packing sees the same lengths
        write_shapes(work / "data", counts={"generation": 1200, "edit": 500, "understanding": 3000,
                                            "interleaved": 250, "text": 100})  # fmt: skip
        settings = [(n, a, pr) for n in args.lengths for a in args.attention for pr in args.precision]
        runs: dict[tuple[int, str, str], list[tuple[float, float]]] = {s: [] for s in settings}
        for _ in range(args.rounds):
            for setting in settings:
                runs[setting].append(time_steps(work, work / "data", *setting, args.steps))
    first = statistics.median(s for s, _ in runs[settings[0]])
    print(f"{'rows of':>8} {'attention':>12} {'precision':>9} {'s / step':>9} {'padding':>8} {'ratio':>6}")
    for (n, attention, precision), results in runs.items():
        step = statistics.median(s for s, _ in results)
        print(f"{n:>8} {attention:>12} {precision:>9} {step:>9.3f} {results[0][1]:>8.1%} {step / first:>6.2f}")


if __name__ == "__main__":
    main()
