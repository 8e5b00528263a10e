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


def test_wide_grey_levels_keep_their_tone(tmp_path):
    """16-bit, 32-bit integer and float images are scaled by the full scale their values fit, not
    stretched per image: a white 16-bit image stays white, a grey one grey."""
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "white16.png")
    grey = np.asarray(shape_image(size=32).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "scene16.png")
    cases = {
        "white 16-bit png": (tmp_path / "white16.png", np.full((8, 8), 255)),
        "16-bit scene": (tmp_path / "scene16.png", grey),
        "L as I": (Image.fromarray(grey).convert("I"), grey),
        "float in [0, 1]": (Image.fromarray(grey.astype(np.float32) / 255, "F"), grey),
        "uniform float 1": (Image.fromarray(np.ones((8, 8), np.float32), "F"), np.full((8, 8), 255)),
    }
    for what, (image, expected) in cases.items():
        assert np.array_equal(np.asarray(load_image(image))[..., 0], expected), what
    signed = np.tile(np.linspace(-5, 5, 16, dtype=np.float32), (4, 1))  # fits no scale: stretched
    assert np.asarray(load_image(Image.fromarray(signed, "F")))[0, [0, -1], 0].tolist() == [0, 255]


def test_exif_orientation_turns_a_sideways_photo_upright(tmp_path):
    from PIL import ExifTags

    stored = Image.new("RGB", (40, 20), "white")
    stored.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left as stored
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # a camera held upright: show it turned 90° clockwise
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    for image in (tmp_path / "phone.jpg", Image.open(tmp_path / "phone.jpg")):
        upright = load_image(image)
        assert upright.size == (20, 40)
        assert upright.getpixel((10, 2))[1] < 60 and upright.getpixel((10, 37))[1] > 200  # red on top now


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
    line = json.loads(
        '{"task": "understanding", "messages": [{"role": "user", "content": [{"type": "image", '
        '"image": "imgs/1.png"}, {"type": "text", "text": "What?"}]}, {"role": "assistant", '
        '"content": [{"type": "text", "text": "A circle."}]}]}'
    )
    batch = processor([line], base_dir=tmp_path)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


# ---------------------------------------------------------------- malformed messages, records and inputs

BAD_MESSAGES = [  # (messages, what the message must say); the same for a prompt and a training record
    ([{"role": "user"}], "user message needs 'content'"),
    ([{"role": "user", "content": None}], "content must be a string or a list of content items, got NoneType"),
    ([{"role": "user", "content": 5}], "content must be a string or a list of content items, got int 5"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "needs a 'text' string, got int 5"),
    ([{"role": "user", "content": [{"type": "text", "text": ["a"]}]}], "needs a 'text' string, got list"),
    ([{"role": "user", "content": [{"type": "text"}]}], "needs a 'text' string, got NoneType"),
    ([{"role": "user", "content": ["hi"]}], "unknown content item str 'hi'"),
    ([{"role": "system", "content": None}, {"role": "user", "content": "hi"}], "system message's content must be"),
    ([{"role": "system", "content": ["a"]}, {"role": "user", "content": "hi"}], "unknown content item str 'a'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "assistant message's content"),
    (["hello"], "a message must be a dict with 'role' and 'content'"),
    ([{"role": "tool", "content": "hi"}], "unknown message role 'tool'; accepted: system, user, assistant"),
    ([{"role": "assistant", "content": "A red"}], "needs at least one user message"),
    ([{"role": "user", "content": "  "}], "user message is empty; give it some text or an image"),
    ([{"role": "user", "content": []}], "user message is empty"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "user message is empty"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}], "an assistant message is empty"),
    (
        [{"role": "user", "content": [{"type": "image", "url": "https://example.com/a.png"}]}],
        "'https://example.com/a.png': images are read from local files only",
    ),
]


@pytest.fixture(scope="module")
def processor():
    from janus_like.testing import tiny_model

    return tiny_model()[1]


@pytest.mark.parametrize("messages, match", BAD_MESSAGES)
def test_malformed_messages_name_the_problem(processor, messages, match):
    with pytest.raises(PromptError, match=match):  # generation side: pipe.chat(messages)
        processor.conversation(messages)
    with pytest.raises(DataError, match=match):  # training side: reported with file:line
        processor.record_to_sequence({"task": "understanding", "messages": messages})


def test_image_items_take_hf_keys_image_path_or_a_local_url(processor, tmp_path):
    shape_image().save(tmp_path / "shape.png")
    pixels = [
        processor.conversation([{"role": "user", "content": [item, {"type": "text", "text": "What?"}]}]).und_pixels
        for item in (
            {"type": "image", "image": str(tmp_path / "shape.png")},
            {"type": "image", "path": str(tmp_path / "shape.png")},
            {"type": "image", "url": (tmp_path / "shape.png").as_uri()},
            {"type": "image", "url": str(tmp_path / "shape.png")},
        )
    ]
    assert all(torch.equal(p[0], pixels[0][0]) for p in pixels)


def test_a_prompt_to_answer_ends_with_the_users_turn(processor):
    ended = [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "A red"}]
    with pytest.raises(PromptError, match="last message must be the user's"):
        processor.conversation(ended)
    # a training record (and a conversation scored without a generation prompt) ends with the answer
    seq = processor.record_to_sequence({"task": "understanding", "messages": ended})
    assert seq.ids[-1] == processor.eos_id and seq.trainable[-1]
    assert processor.conversation(ended, add_generation_prompt=False).ids == seq.ids
    image_only = [{"role": "user", "content": [{"type": "image", "image": shape_image()}]}]
    assert processor.conversation(image_only).und_pixels  # an image alone is something to answer


@pytest.mark.parametrize(
    "record, match",
    [
        (
            {"task": "interleaved", "segments": [{"type": "text", "text": 5}]},
            "text segment needs a 'text' string, got int",
        ),
        ({"task": "interleaved", "segments": [{"type": "text", "text": ["a"]}]}, "text segment needs a 'text' string"),
        (
            {"task": "interleaved", "prompt": 5, "segments": [{"type": "text", "text": "a"}]},
            "'prompt' must be a string or a list of content items, got int 5",
        ),
        (
            {"task": "generation", "prompt": "x", "image": "out.png", "input_images": "in.png"},
            "'input_images' must be a list of images .*got str 'in.png'; put a single image in a list",
        ),
        ({"task": "generation", "prompt": "x", "image": "out.png", "input_images": 5}, "'input_images' must be a list"),
    ],
)
def test_malformed_record_fields_name_the_field(processor, record, match):
    with pytest.raises(DataError, match=match):
        processor.record_to_sequence(record)


def test_null_input_images_means_none(processor):
    record = {"task": "generation", "prompt": "x", "image": shape_image(), "input_images": None}
    assert not processor.record_to_sequence(record).und_pixels


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda p, text: p.generation_prompt(text), PromptError),
        (lambda p, text: p.conversation([{"role": "user", "content": text}]), PromptError),
        (lambda p, text: p.record_to_sequence({"task": "text", "text": text}), DataError),
    ],
)
@pytest.mark.parametrize("text", ["a \ud800 circle", "a \udcff circle"])  # the second: a non-UTF-8 CLI argument
def test_text_that_is_not_unicode_is_refused(processor, call, error, text):
    with pytest.raises(error, match=r"valid Unicode: the character at position 2 \(from 0\).* U\+D"):
        call(processor, text)


def test_generation_prompt_refuses_a_bare_image_or_a_non_string(processor):
    with pytest.raises(PromptError, match="images must be a list of images"):
        processor.generation_prompt("make it blue", images="in.png")
    with pytest.raises(PromptError, match="the prompt must be a string, got int"):
        processor.generation_prompt(5)


@pytest.mark.parametrize(
    "image",
    [np.zeros((8, 8, 3), np.uint8), b"imgs/x.png", 3, torch.zeros(3, 8, 8), None],
    ids=["ndarray", "bytes", "int", "tensor", "None"],
)
def test_load_image_names_the_accepted_types(image):
    with pytest.raises(ImageError, match=r"file path \(str or os.PathLike\) or a PIL.Image.Image, got"):
        load_image(image)


def test_load_image_refuses_an_open_file_a_directory_and_an_empty_path(tmp_path):
    shape_image().save(tmp_path / "x.png")
    with open(tmp_path / "x.png", "rb") as f, pytest.raises(ImageError, match="got BufferedReader"):
        load_image(f)
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(ImageError, match="adir.png is a directory"):
        load_image(tmp_path / "adir.png")
    with pytest.raises(ImageError, match="the image path is empty"):
        load_image("")


def test_float_image_with_nan_and_inf_keeps_its_content(tmp_path):
    arr = np.tile(np.linspace(0.0, 1.0, 16, dtype=np.float32), (16, 1))
    arr[0, 0], arr[0, 1], arr[0, 2] = np.nan, np.inf, -np.inf
    Image.fromarray(arr, "F").save(tmp_path / "f.tiff")
    out = np.asarray(load_image(tmp_path / "f.tiff"))[..., 0]
    assert out[1].min() == 0 and out[1].max() == 255  # the gradient survives (was all black)
    assert out[0, :3].tolist() == [0, 255, 0]  # NaN and -inf as the lowest value, +inf as the highest
    with pytest.raises(ImageError, match="no finite pixel values"):
        load_image(Image.fromarray(np.full((4, 4), np.nan, np.float32), "F"))


def test_own_format_processor_files_are_checked(processor, tmp_path):
    from janus_like import CheckpointError, JanusLikeProcessor

    processor.save_pretrained(tmp_path)
    settings = tmp_path / "processor_config.json"
    for text, match in [
        ("{bad", "processor_config.json is not valid .*JSON"),
        ("[1]", "processor_config.json must hold a JSON object"),
        ('{"image_mean": "abc"}', "processor_config.json image_mean = 'abc'; accepted: a list of 3 numbers"),
    ]:
        settings.write_text(text)
        with pytest.raises(CheckpointError, match=match):
            JanusLikeProcessor.from_dir(tmp_path, processor.config)
    settings.unlink()
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        JanusLikeProcessor.from_dir(tmp_path, processor.config)
