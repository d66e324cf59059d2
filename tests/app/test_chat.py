"""`vlm chat` driven as a user drives it: one-shot, --json, piped interactive sessions, and every error case."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.chat import run_interactive
from vlm.chat_session import ChatSession
from app.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("chat_images")
    red = tmp / "red.png"
    Image.new("RGB", (40, 30), (220, 20, 20)).save(red)
    blue = tmp / "blue.jpg"
    Image.new("RGB", (32, 32), (20, 20, 220)).save(blue)
    not_image = tmp / "notes.png"
    not_image.write_text("this is text, not a picture")
    return {"red": red, "blue": blue, "not_image": not_image}


def _one_shot(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["chat", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_one_shot_json_matches_direct_generation(tiny_vlm_dir, images, capsys):
    code, out, err = _one_shot(
        capsys, "--model", str(tiny_vlm_dir), "--image", str(images["red"]), "--question", "What colour is it?",
        "--max-new-tokens", "6", "--json",
    )
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["question"] == "What colour is it?"

    from vlm.model import VisionLanguageModel

    model = VisionLanguageModel.load(tiny_vlm_dir)
    session = ChatSession(model, max_new_tokens=6)
    session.add_image(images["red"])
    expected, _ = session.ask("What colour is it?")
    assert record["answer"] == expected


def test_one_shot_plain_output_is_the_answer(tiny_vlm_dir, images, capsys):
    code, out, _ = _one_shot(capsys, "--model", str(tiny_vlm_dir), "--image", str(images["blue"]),
                             "--question", "Describe it.", "--max-new-tokens", "4")
    assert code == 0
    assert len(out.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_image", "image not found"),
        ("not_image", "cannot read image"),
        ("dir_not_model", "is not a model directory"),
        ("missing_model", "model directory not found"),
    ],
)
def test_errors_are_one_line_not_tracebacks(case, expected, tiny_vlm_dir, images, tmp_path, capsys):
    model, image = str(tiny_vlm_dir), str(images["red"])
    if case == "missing_image":
        image = str(tmp_path / "nope.png")
    elif case == "not_image":
        image = str(images["not_image"])
    elif case == "dir_not_model":
        model = str(tmp_path)
    elif case == "missing_model":
        model = str(tmp_path / "no_such_dir")
    code, _, err = _one_shot(capsys, "--model", model, "--image", image, "--question", "hi")
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err


def test_interactive_piped_session_streams_and_handles_commands(tiny_vlm_dir, images):
    script = "\n".join([
        f"/image {images['red']}",
        "What colour is it?",
        "/image /definitely/missing.png",
        "/bogus",
        "/reset",
        "And now?",
        "/exit",
    ]) + "\n"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "chat", "--model", str(tiny_vlm_dir), "--max-new-tokens", "5"],
        input=script, capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"[image attached: {images['red']}]" in out
    assert "error: image not found: /definitely/missing.png" in out
    assert "unknown command /bogus" in out
    assert "[conversation reset]" in out
    assert "Traceback" not in proc.stderr

    from vlm.model import VisionLanguageModel

    session = ChatSession(VisionLanguageModel.load(tiny_vlm_dir), max_new_tokens=5)
    session.add_image(images["red"])
    expected, _ = session.ask("What colour is it?")
    # The streamed answer is printed right after the prompt marker of the question's turn.
    turns = out.split(">>> ")
    streamed = [t for t in turns[1:] if t.strip() and not t.startswith(("[", "error", "unknown"))]
    assert streamed[0].strip() == expected


def test_history_overflow_drops_oldest_turns_with_notice(tiny_vlm_dir):
    from vlm.model import VisionLanguageModel

    model = VisionLanguageModel.load(tiny_vlm_dir)
    session = ChatSession(model, max_new_tokens=4)
    one_turn = len(session.prepare("a question about shapes and colours")[0])
    session.context_length = 4 + 2 * one_turn + 6  # room for about two turns
    out = io.StringIO()
    questions = "\n".join(["a question about shapes and colours"] * 5) + "\n/exit\n"
    run_interactive(session, io.StringIO(questions), out)
    assert "oldest turn(s) dropped to fit the context length" in out.getvalue()
    ids, _, _ = session.prepare("a question about shapes and colours")
    assert len(ids) <= session.context_length - session.max_new_tokens


def test_question_too_long_for_context_is_a_clear_error(tiny_vlm_dir):
    from vlm.chat_session import ChatError
    from vlm.model import VisionLanguageModel

    session = ChatSession(VisionLanguageModel.load(tiny_vlm_dir), max_new_tokens=4)
    session.context_length = 10
    with pytest.raises(ChatError, match="more than the model's context"):
        session.ask("a question that cannot fit in ten tokens at all, not even close")


def test_images_attach_to_the_turn_they_precede(tiny_vlm_dir, images):
    from vlm.model import VisionLanguageModel

    session = ChatSession(VisionLanguageModel.load(tiny_vlm_dir), max_new_tokens=3)
    session.add_image(images["red"])
    session.ask("first")
    session.add_image(images["blue"])
    ids, pixels, _ = session.prepare("second")
    assert len(pixels) == 2
    image_positions = sum(1 for i in ids if i == session.model.config.image_token_id)
    assert image_positions == 2 * session.model.config.num_image_tokens
    assert not torch.equal(pixels[0], pixels[1])
