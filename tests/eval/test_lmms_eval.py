"""lmms-eval (optional extra `lmms`) runs its evaluator on our model class over a local task made from a synthetic
world's official POPE files, and gets the answers and scores of `vlm eval run` on the same items."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from app.cli import main  # noqa: E402
from eval.lmms_tasks.pope_world import write_documents, write_task  # noqa: E402
from synthetic.generate import SynthConfig, generate_world  # noqa: E402

pytestmark = pytest.mark.slow  # a tiny world, a tiny model, both harnesses: ~30 s


def test_lmms_eval_scores_equal_vlm_eval_run(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from eval.lmms_eval_adapter import VLMTrainerLMM

    world = tmp_path / "world"
    generate_world(SynthConfig(out=str(world), seed=0, num_train=2, num_test=6, num_workers=1, pope_images=4,
                               scienceqa_images=1, scienceqa_text=1, text_eval=2, text_chats=2, corpus_scenes=10,
                               vocab_size=300))
    ours_dir = tmp_path / "ours"
    assert main(["eval", "run", "--model", str(tiny_vlm_dir), "--benchmark", "pope", "--split", "random",
                 "--data-root", str(world), "--out", str(ours_dir), "--max-new-tokens", "8", "--batch-size", "4",
                 "--no-progress"]) == 0
    ours = json.loads((ours_dir / "scores.json").read_text())
    our_answers = {row["question_id"]: row["text"] for row in map(json.loads, (ours_dir / "predictions.jsonl").open())}

    name = write_task(tmp_path / "tasks", write_documents(world, tmp_path / "pope_docs.jsonl"))
    model = VLMTrainerLMM(pretrained=str(tiny_vlm_dir), device="cpu", batch_size=3, max_new_tokens=8)
    out = simple_evaluate(model=model, tasks=[name], batch_size=3, log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False))
    theirs = out["results"][name]
    their_answers = {s["doc"]["question_id"]: s["resps"][0][0] for s in out["samples"][name]}

    assert len(their_answers) == ours["n"] == 16
    assert their_answers == our_answers  # same prompts, pixels and greedy tokens through lmms-eval's requests
    assert theirs["pope_f1,none"] == ours["scores"]["f1"] and theirs["pope_accuracy,none"] == ours["scores"]["accuracy"]


def test_register_adds_the_model_name_to_lmms_eval() -> None:
    from lmms_eval.models import get_model

    from eval.lmms_eval_adapter import MODEL_ID, VLMTrainerLMM, register

    register()
    assert get_model(MODEL_ID) is VLMTrainerLMM  # `--model vlm_trainer` on lmms-eval's command line
