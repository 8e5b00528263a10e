"""Bad input gets a JanusLikeError that names the problem; odd but valid images are converted."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from janus_like import DataError, ImageError, JanusLikeError, PromptError
from janus_like.images import load_image
from janus_like.testing import shape_image


def test_unreadable_file(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match="cannot read image .*noise.png"):
        load_image(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.png"
    shape_image(size=256).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt|cannot read"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found: .*nope.png"):
        load_image(tmp_path / "nope.png")


def test_zero_pixel_image():
    with pytest.raises(ImageError, match="no pixels .*0x5"):
        load_image(Image.new("RGB", (0, 5)))


def test_decompression_bomb(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(path)  # 144 M pixels in a few kB
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="too large|at most"):
        load_image(path)


def test_pixel_cap_names_the_limit():
    with pytest.raises(ImageError, match="at most 100 are accepted"):
        load_image(Image.new("RGB", (20, 20)), max_pixels=100)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "I", "F", "1"])
def test_non_rgb_modes_become_rgb(tmp_path, mode):
    base = shape_image(size=32)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257), "I;16")
    else:
        img = base.convert(mode)
    path = tmp_path / f"img.{'tiff' if mode in ('CMYK', 'I;16', 'I', 'F') else 'png'}"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (32, 32)
    arr = np.asarray(out)
    assert arr.max() > 200 and arr.min() < 120, mode  # the white background and the shape both survive


def test_transparent_pixels_composite_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(img))[0, 0].tolist() == [255, 255, 255]


def test_unknown_task_and_missing_image_in_records(tiny, tmp_path):
    _, processor = tiny
    with pytest.raises(DataError, match="unknown task 'captioning'; accepted: understanding, generation"):
        processor.record_to_sequence({"task": "captioning", "text": "x"})
    with pytest.raises(ImageError, match="not found: .*missing.png"):
        processor.record_to_sequence({"task": "generation", "prompt": "a", "image": "missing.png"}, tmp_path)
    with pytest.raises(DataError, match="needs a non-empty 'prompt'"):
        processor.record_to_sequence({"task": "generation", "prompt": "", "image": "x.png"}, tmp_path)
    assert issubclass(DataError, JanusLikeError)


def test_prompt_longer_than_context(tiny):
    _, processor = tiny
    limit = processor.config.text_config.max_position_embeddings
    seq = processor.record_to_sequence({"task": "text", "text": "x" * (limit + 10)})
    with pytest.raises(PromptError, match=f"needs {limit + 12} positions but the model's context holds {limit}"):
        processor.collate([seq])


def test_understanding_preprocessing_pads_to_square_with_mean_colour(tiny):
    _, processor = tiny
    wide = Image.new("RGB", (64, 16), (255, 0, 0))
    pixels = processor.understanding_pixels(wide)
    assert pixels.shape == (3, 32, 32)
    # top rows are the (127,127,127) background, normalised with mean=std=0.5
    assert torch.allclose(pixels[:, 0, 0], torch.full((3,), 127 / 255 / 0.5 - 1.0), atol=1e-6)
    assert torch.allclose(pixels[:, 16, 16], torch.tensor([1.0, -1.0, -1.0]), atol=1e-6)


def test_generation_pixels_are_in_minus_one_one(tiny):
    _, processor = tiny
    pixels = processor.generation_pixels(shape_image(size=50))
    assert pixels.shape == (3, 16, 16) and pixels.min() >= -1 and pixels.max() <= 1


def test_records_from_jsonl_paths(tiny, tmp_path):
    _, processor = tiny
    (tmp_path / "imgs").mkdir()
    shape_image().save(tmp_path / "imgs" / "1.png")
    line = json.loads('{"task": "understanding", "messages": [{"role": "user", "content": [{"type": "image", '
                      '"image": "imgs/1.png"}, {"type": "text", "text": "What?"}]}, {"role": "assistant", '
                      '"content": [{"type": "text", "text": "A circle."}]}]}')
    batch = processor([line], base_dir=tmp_path)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
