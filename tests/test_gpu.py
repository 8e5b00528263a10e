"""The CUDA path (docs/ARCHITECTURE.md §3 "GPU"): the engine on a GPU agrees with the CPU, the compiled step
(CUDA graphs) with eager, bf16 draws the default model's scenes, and a bf16 training run learns.
Skipped without CUDA; run them with `python -m pytest -q -m gpu` on a GPU machine."""

import pytest
import torch

from janus_like import JanusLikePipeline
from janus_like.evaluation import shapes_language as lang
from janus_like.evaluation.shapes import Scene, classify, reads_as, render
from janus_like.generation import GenerationEngine, GenerationSettings, Request
from janus_like.testing import tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def tiny_pair():
    """The same tiny random model on the CPU and on the GPU (fp32), and its processor."""
    cpu, processor = tiny_model(seed=0)
    gpu, _ = tiny_model(seed=0)
    return cpu, gpu.to("cuda"), processor


def _generate(model, processor, compile: bool = False, calls: int = 1):
    engine = GenerationEngine(model, processor, compile=compile)
    draw = Request(processor.generation_prompt("a red circle"), "image")
    chat = Request(processor.conversation([{"role": "user", "content": "hello"}]))
    settings = GenerationSettings(temperature=0, cfg_scale=5.0, max_new_tokens=12)
    for _ in range(calls):  # later calls reuse the cache and, compiled, the captured graphs
        results = engine.generate([draw, draw, chat], settings)
    return [r.codes[0].cpu() for r in results[:2]], results[2].token_ids


def test_gpu_greedy_codes_and_text_equal_the_cpu(tiny_pair):
    cpu, gpu, processor = tiny_pair
    (cpu_codes, cpu_text), (gpu_codes, gpu_text) = _generate(cpu, processor), _generate(gpu, processor)
    assert all(torch.equal(a, b) for a, b in zip(cpu_codes, gpu_codes)) and cpu_text == gpu_text


def test_gpu_compiled_step_equals_eager_and_is_reused(tiny_pair):
    _, gpu, processor = tiny_pair
    eager_codes, eager_text = _generate(gpu, processor)
    compiled_codes, compiled_text = _generate(gpu, processor, compile=True, calls=2)
    assert all(torch.equal(a, b) for a, b in zip(eager_codes, compiled_codes)) and eager_text == compiled_text


def test_gpu_bf16_default_model_draws_the_prompted_scenes():
    pipe = JanusLikePipeline.from_pretrained(device="cuda", dtype=torch.bfloat16)
    scene = Scene.single("red", "circle", "large", "left")
    readings = [classify(im) for im in pipe.generate_images(lang.describe(scene), num_images=4, seed=0)]
    assert sum(reads_as(r, scene) for r in readings) >= 3, readings
    answer = pipe.chat(
        "What is in this image?", images=[render(Scene.single("yellow", "square", "large", "right"), 64)]
    )
    assert "yellow" in answer.lower(), answer


def test_gpu_bf16_training_run_learns(tmp_path):
    from test_training import reset_accelerate, run, write_dataset

    write_dataset(tmp_path)
    try:
        trainer, state = run(
            tmp_path,
            training={"max_steps": 30, "batch_size": 8, "mixed_precision": "bf16"},
            logging={"every": 5, "save_every": 30, "tensorboard": False},
        )
        device = trainer.accelerator.device  # read before the reset, which clears accelerate's state
    finally:
        reset_accelerate()
    assert device.type == "cuda" and next(trainer.model.parameters()).is_cuda
    losses = [h["loss"] for h in state.history]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(map(torch.isfinite, torch.tensor(losses))) and last < 0.7 * first, losses
