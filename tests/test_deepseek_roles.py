"""DeepSeek-layout chat roles come from the Janus release, never from how the vocabulary splits them.

DeepSeek's scripts write the role strings into the prompt text whatever the tokenizer makes of them
(Janus-Pro: `<|User|>` / `<|Assistant|>`; Janus-1.3B: `User` / `Assistant`; docs/checkpoints.md).
Each case here runs their procedure (tests/reference_janus.py: their prompt text, process_one, their
greedy `generate` and CFG loop) beside this package's engine on the same tiny checkpoint, token for token.
"""

import json
import logging

import pytest
import reference_janus as ref
import torch
from test_checkpoints import raw_tokenizer, tiny_tables, write_deepseek  # noqa: F401 (tiny_tables: autouse)

from janus_like import JanusLikeForConditionalGeneration, JanusLikePipeline, JanusLikeProcessor, SettingsError
from janus_like.checkpoint import deepseek
from janus_like.convert import convert
from janus_like.generation import GenerationEngine, GenerationSettings, Request
from janus_like.testing import BOS, EOS, PAD, shape_image

PRO, PLAIN = ("<|User|>", "<|Assistant|>"), ("User", "Assistant")
ROLE_LOG = "janus_like.checkpoint"


def drop_role_tokens(path) -> None:
    """The Pro tokenizer files without <|User|> / <|Assistant|>: the roles become several byte tokens."""
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] not in PRO]
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    special = json.loads((path / "special_tokens_map.json").read_text())
    special["additional_special_tokens"] = [t for t in special["additional_special_tokens"] if t not in PRO]
    (path / "special_tokens_map.json").write_text(json.dumps(special))


def add_role_tokens(path) -> None:
    """A Janus-1.3B-shaped tokenizer that happens to hold <|User|> / <|Assistant|> as single tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.add_special_tokens(list(PRO))
    tokenizer.save(str(path / "tokenizer.json"))


def checkpoint(tmp_path_factory, name: str, release: str, role_tokens: bool):
    """A DeepSeek-layout folder `name` (Janus-Pro-shaped or Janus-1.3B-shaped files) with or without the
    Pro role tokens in its vocabulary; returns its path and the reference model holding its weights."""
    path = tmp_path_factory.mktemp("release") / name
    reference = write_deepseek(path, pro=release == "pro")
    if release == "pro" and not role_tokens:
        drop_role_tokens(path)
    if release == "1.3b" and role_tokens:
        add_role_tokens(path)
    vocab = raw_tokenizer(path).get_vocab()
    assert all(role in vocab for role in PRO) == role_tokens
    return path, reference


def reference_ids(path) -> tuple[object, dict]:
    """DeepSeek's tokenizer as VLChatProcessor holds it (the image tag added when missing) and the ids it uses."""
    tokenizer = raw_tokenizer(path)
    tokenizer.add_special_tokens(["<image_placeholder>"])  # a no-op where the files hold it
    vocab = tokenizer.get_vocab()
    ids = {
        "bos": vocab[BOS],
        "eos": vocab[EOS],
        "pad": vocab[PAD],
        "image": vocab["<image_placeholder>"],
        "start": vocab["<begin_of_image>"],
        "end": vocab["<end_of_image>"],
    }
    return tokenizer, ids


def assert_chat_and_image_parity(path, reference, roles, **options) -> None:
    """Greedy chat and greedy CFG image codes through JanusLikePipeline's engine equal DeepSeek's
    procedure with `roles` written into the prompt, token for token."""
    model = JanusLikeForConditionalGeneration.from_pretrained(path, dtype=torch.float32, **options)
    processor = JanusLikeProcessor.from_pretrained(path, model.config)
    assert (processor.config.user_role, processor.config.assistant_role) == roles
    tokenizer, ids = reference_ids(path)
    engine = GenerationEngine(model, processor, decode=False)

    # chat: inference.py's understanding prompt (system prompt, image, question) and its greedy generate
    seq = processor.conversation(
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": shape_image()}, {"type": "text", "text": "Describe it."}],
            }
        ]
    )
    prompt_ids = ref.chat_prompt_ids(tokenizer, "Describe it.", roles, ids, processor.num_image_tokens)
    assert seq.ids == prompt_ids
    pixels = processor.collate([seq])["pixel_values"]
    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        embeds = reference.prepare_inputs_embeds(
            input_ids,
            pixels[None],
            input_ids == ids["image"],
            torch.ones(1, 1, processor.num_image_tokens, dtype=torch.bool),
        )
    expected = ref.greedy_text(reference, embeds, steps=8, eos_id=ids["eos"])
    ours = engine.generate([Request(seq)], GenerationSettings(temperature=0, max_new_tokens=8))[0].token_ids
    assert ours == expected

    # more turns: sep "\n\n" after a user turn, sep2 "<｜end▁of▁sentence｜>" after an answer (conversation.py)
    turns = [("user", "Hi."), ("assistant", "Hello."), ("user", "Bye.")]
    seq = processor.conversation([{"role": role, "content": text} for role, text in turns])
    text = ref.sft_prompt(
        [{"role": roles[role == "assistant"], "content": text} for role, text in turns]
        + [{"role": roles[1], "content": ""}],
        ref.SYSTEM_PROMPT,
    )
    assert "Hello.<｜end▁of▁sentence｜>" in text
    assert seq.ids == [ids["bos"]] + tokenizer.encode(text, add_special_tokens=False).ids

    # image: generation_inference.py's prompt (no system prompt, + <begin_of_image>) and its CFG loop
    gen = processor.generation_prompt("a red circle")
    gen_ids = ref.generation_prompt_ids(tokenizer, "a red circle", roles, ids["bos"])
    assert gen.ids == gen_ids
    assert processor.unconditional(gen).ids == [ids["bos"]] + [ids["pad"]] * (len(gen_ids) - 2) + [ids["start"]]
    expected_codes = ref.greedy_image_codes(
        reference, gen_ids, ids["pad"], cfg_weight=5.0, steps=processor.num_gen_tokens
    )
    result = engine.generate([Request(gen, "image")], GenerationSettings(temperature=0, cfg_scale=5.0))[0]
    assert len(set(expected_codes.tolist())) > 1  # not a constant image
    assert result.codes[0].tolist() == expected_codes.tolist()


PARITY = [  # folder, files, role tokens in the vocabulary, options, the roles DeepSeek's scripts write
    pytest.param("Janus-Pro-tiny", "pro", True, {}, PRO, id="pro-roles-single-tokens"),
    pytest.param("Janus-Pro-tiny", "pro", False, {}, PRO, id="pro-roles-split-by-the-vocabulary"),
    pytest.param("Janus-1.3B-tiny", "1.3b", False, {}, PLAIN, id="janus-1.3b"),
    pytest.param("Janus-1.3B-tiny", "1.3b", True, {}, PLAIN, id="janus-1.3b-vocabulary-holding-pro-roles"),
    pytest.param("Janus-Pro-tiny", "pro", True, {"chat_roles": "janus-1.3b"}, PLAIN, id="override-by-release"),
]


@pytest.mark.parametrize("name, release, role_tokens, options, roles", PARITY)
def test_greedy_chat_and_image_codes_equal_deepseeks_scripts(
    tmp_path_factory, name, release, role_tokens, options, roles, caplog
):
    path, reference = checkpoint(tmp_path_factory, name, release, role_tokens)
    with caplog.at_level(logging.WARNING, logger=ROLE_LOG):
        assert_chat_and_image_parity(path, reference, roles, **options)
    assert not [r for r in caplog.records if r.name == ROLE_LOG]  # the release was told (or given)


def test_an_unnamed_checkpoint_gets_pro_roles_and_says_so_once(tmp_path_factory, caplog):
    path, reference = checkpoint(tmp_path_factory, "ckpt", "pro", False)
    with caplog.at_level(logging.WARNING, logger=ROLE_LOG):
        assert_chat_and_image_parity(path, reference, PRO)
        JanusLikeProcessor.from_pretrained(path)
    notes = [r.getMessage() for r in caplog.records if r.name == ROLE_LOG]
    assert len(notes) == 1
    assert str(path) in notes[0] and "<|User|> / <|Assistant|>" in notes[0] and "chat_roles='janus-1.3b'" in notes[0]


@pytest.mark.parametrize(
    "folder, sft_format, roles",
    [
        ("models--deepseek-ai--Janus-1.3B/snapshots/0123abcd", None, PLAIN),  # huggingface_hub's cache
        ("models--deepseek-ai--Janus-Pro-7B/snapshots/0123abcd", None, PRO),
        ("janus_pro_1b", None, PRO),
        ("my-finetune", "deepseek_old", PLAIN),  # conversation.py's pre-Pro template names the plain roles
    ],
)
def test_the_release_is_told_by_its_names_and_template(tmp_path_factory, folder, sft_format, roles):
    path = tmp_path_factory.mktemp("named") / folder
    path.mkdir(parents=True)
    write_deepseek(path, pro=True)  # a vocabulary holding the Pro role tokens: it must not matter
    if sft_format is not None:
        config = json.loads((path / "processor_config.json").read_text())
        (path / "processor_config.json").write_text(json.dumps({**config, "sft_format": sft_format}))
    config = JanusLikeProcessor.from_pretrained(path).config
    assert (config.user_role, config.assistant_role) == roles


def test_release_names(tmp_path):
    assert deepseek.release_of(tmp_path / "Janus-Pro-7B", {}, "deepseek") == "janus-pro"
    assert deepseek.release_of(tmp_path / "JanusFlow-1.3B", {}, "deepseek") == "janusflow"
    assert deepseek.release_of(tmp_path / "x", {"_name_or_path": "deepseek-ai/Janus-1.3B"}, "deepseek") == "janus-1.3b"
    assert deepseek.release_of(tmp_path / "Janus-Pro-7B" / "ckpt", {}, "deepseek") is None  # only its own folder
    assert deepseek.release_of(tmp_path / "januslike-13b", {}, "deepseek") is None


def test_chat_roles_setting_for_every_loader(tmp_path_factory, tmp_path):
    path, _ = checkpoint(tmp_path_factory, "Janus-1.3B-tiny", "1.3b", False)
    pipe = JanusLikePipeline.from_pretrained(path, device="cpu", dtype=torch.float32, chat_roles=("Q", "A"))
    assert (pipe.model.config.user_role, pipe.processor.config.assistant_role) == ("Q", "A")
    assert pipe.processor.conversation(
        [{"role": "user", "content": "hi"}], system_prompt=""
    ).ids == pipe.processor.encode_text(f"{BOS}Q: hi\n\nA:")
    processor = JanusLikeProcessor.from_pretrained(path, chat_roles="janus-pro")
    assert processor.config.user_role == "<|User|>"
    # the given model config keeps its roles; the processor gets a copy with the override
    assert (
        JanusLikeProcessor.from_pretrained(path, pipe.model.config, chat_roles="janus-pro").config.user_role
        == "<|User|>"
        and pipe.model.config.user_role == "Q"
    )

    # convert writes the release's roles (or the setting's) into this package's config; loading overrides them
    own = convert(path, tmp_path / "own")
    assert json.loads((own / "config.json").read_text())["user_role"] == "User"
    model = JanusLikeForConditionalGeneration.from_pretrained(own, chat_roles="janus-pro")
    assert (model.config.user_role, model.config.assistant_role) == PRO
    assert JanusLikeProcessor.from_pretrained(own).config.user_role == "User"
    assert JanusLikeProcessor.from_pretrained(own, chat_roles=["R", "S"]).config.assistant_role == "S"
    pro = convert(path, tmp_path / "own-pro", chat_roles="janus-pro")
    assert json.loads((pro / "config.json").read_text())["assistant_role"] == "<|Assistant|>"


@pytest.mark.parametrize("value", ["pro", "", ("User",), ("User", ""), ("User", 5), 5, ("a", "b", "c")])
def test_bad_chat_roles_are_refused_naming_the_accepted_values(tmp_path_factory, tmp_path, value):
    path, _ = checkpoint(tmp_path_factory, "Janus-Pro-tiny", "pro", True)
    for load in (
        lambda: JanusLikeForConditionalGeneration.from_pretrained(path, chat_roles=value),
        lambda: JanusLikeProcessor.from_pretrained(path, chat_roles=value),
        lambda: convert(path, tmp_path / "out", chat_roles=value),
    ):
        with pytest.raises(
            SettingsError,
            match=r"chat_roles=.* is not accepted; accepted: None .*'janus-pro' "
            r"\(<\|User\|> / <\|Assistant\|>\), 'janus-1.3b' .*pair of non-empty",
        ):
            load()
    assert not (tmp_path / "out").exists()
