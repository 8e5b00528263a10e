"""The `janus-like` command line itself: light start-up, documented options, one-line usage errors,
the note on the embedded default model."""

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from janus_like.cli import COMMANDS, build_parser, main
from janus_like.commands import DEFAULT_MODEL_NOTE
from janus_like.evaluation import EVALUATIONS
from janus_like.generation.settings import MAX_IMAGES_PER_PROMPT, MAX_INTERLEAVED_IMAGES, MAX_TEMPERATURE

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "gradio", "janus_like.modeling", "janus_like.pipeline")


def _run_cli_and_list_heavy_imports(*argv: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter; on exit it prints which heavy modules got imported."""
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr))\n"
        "from janus_like.cli import main\n"
        f"sys.exit(main({list(argv)!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "argv, status",
    [
        (["--help"], 0),
        (["--version"], 0),
        (["generate", "--help"], 0),
        (["demo", "--port", "99999"], 2),
        (["generate", "x", "--seed", "one"], 2),
    ],
)
def test_help_version_and_usage_errors_import_no_heavy_library(argv, status):
    result = _run_cli_and_list_heavy_imports(*argv)
    assert result.returncode == status, result.stderr
    assert "HEAVY []" in result.stderr


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"janus-like {importlib.metadata.version('janus_like')}"


def _subparsers(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its name ("generate", …; "eval shapes" for a command's own sub-commands)."""
    parser = parser or build_parser()
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[prefix + name] = sub
                found.update(_subparsers(sub, f"{prefix}{name} "))
    return found


def test_there_is_one_registration_per_sub_command():
    assert len([name for name in _subparsers() if " " not in name]) == len(COMMANDS)


def test_each_evaluation_is_an_eval_sub_command():
    assert {name.removeprefix("eval ") for name in _subparsers() if name.startswith("eval ")} == set(EVALUATIONS)


@pytest.mark.parametrize("command", list(_subparsers()))
def test_every_option_says_what_it_does_and_its_default(command):
    parser = _subparsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.dest} has no help"
        if not action.option_strings:
            continue
        shown = action.help % {"default": action.default}
        assert "default" in shown, f"{command} {action.option_strings[0]} does not say its default"
        if action.default not in (None, False, []):
            assert f"default: {action.default}" in shown, f"{command} {action.option_strings[0]}: {shown}"
    assert "DESIGN.md" not in parser.format_help()


def test_option_help_states_the_accepted_ranges():
    helps = {command: parser.format_help() for command, parser in _subparsers().items()}
    assert f"1 to {MAX_IMAGES_PER_PROMPT}" in " ".join(helps["generate"].split())
    assert f"0 to {MAX_INTERLEAVED_IMAGES}" in " ".join(helps["interleave"].split())
    assert f"{MAX_TEMPERATURE:g}" in helps["chat"] and "1 to 65535" in " ".join(helps["demo"].split())


def test_sampling_flags_are_shared_by_the_commands_that_take_them():
    subparsers = _subparsers()
    helps = {
        c: {a.dest: a.help for a in subparsers[c]._actions} for c in ("generate", "chat", "interleave", "eval shapes")
    }
    assert len({h["temperature"] for h in helps.values()}) == 1
    assert helps["generate"]["top_k"] == helps["chat"]["top_k"]
    assert helps["generate"]["cfg_scale"] == helps["interleave"]["cfg_scale"] == helps["eval shapes"]["cfg_scale"]


@pytest.mark.parametrize("port", ["99999", "-1", "0", "http"])
def test_a_port_out_of_range_is_a_one_line_usage_error(port, capsys):
    assert main(["demo", "--port", port]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--port" in err and "1 to 65535" in err


def test_image_guidance_without_input_images_is_a_usage_error(capsys):
    assert main(["generate", "a red circle", "--image-cfg-scale", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--image-cfg-scale" in err and "--image" in err


def test_the_default_model_is_announced_once_when_it_loads(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["chat", "What is in this image?", "--max-new-tokens", "2", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count(DEFAULT_MODEL_NOTE) == 1 and "--model" in DEFAULT_MODEL_NOTE
    assert main(["chat", "", "--model", str(out)]) == 2  # a named model: no note
    assert DEFAULT_MODEL_NOTE not in capsys.readouterr().err


def test_chat_roles_reach_the_loader(monkeypatch, capsys):
    """--chat-roles is the CLI's spelling of from_pretrained(chat_roles=...); a bad one is a one-line error."""
    seen = {}

    def load(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr("janus_like.pipeline.JanusLikePipeline.from_pretrained", load)
    with pytest.raises(SystemExit):
        main(["chat", "hi", "--chat-roles", "janus-1.3b"])
    assert seen["chat_roles"] == "janus-1.3b"
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["chat", "hi", "--chat-roles", "janus-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "chat_roles='janus-2' is not accepted" in err[-1] and "janus-1.3b" in err[-1]
