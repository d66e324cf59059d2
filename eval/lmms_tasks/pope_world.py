"""An lmms-eval task over a synthetic world's official POPE files: documents, prompts and scoring.

The prompt and the scorer are those of `vlm eval run --benchmark pope` (the official POPE answer parsing), so the
two harnesses must agree item by item; lmms-eval's own `pope` task scores by exact match instead."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from eval.benchmarks import BenchmarkPaths, get_benchmark
from eval.metrics.pope import score_pope

TASK_YAML = Path(__file__).with_name("pope_world.yaml")
TASK_NAME = "vlm_pope_world"


def write_documents(world: str | Path, out_file: str | Path, split: str = "random") -> Path:
    """The world's POPE questions (read by the same loader as `vlm eval run`) as a JSON-lines dataset file."""
    items = get_benchmark("pope").load(BenchmarkPaths(Path(world), split=split))
    out_file = Path(out_file)
    with out_file.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps({"question_id": item.key, "image": str(item.image), "prompt": item.prompt,
                                     "label": item.meta["label"], "split": item.meta["split"]}) + "\n")
    return out_file


def write_task(directory: str | Path, documents: str | Path) -> str:
    """`pope_world.yaml` with its dataset file set, written into `directory`; returns the task name. Load it with
    `simple_evaluate(tasks=[name], task_manager=TaskManager(include_path=str(directory)))`. (A config dict in
    `tasks=` would not do: lmms-eval pops its `task` name, and the requests then name no task.)"""
    text = TASK_YAML.read_text(encoding="utf-8").replace("PLACEHOLDER", json.dumps(str(documents)))
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / TASK_YAML.name).write_text(text, encoding="utf-8")
    return TASK_NAME


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    with Image.open(doc["image"]) as image:
        image.load()
        return [image.copy()]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    return doc["prompt"]  # already the benchmark's prompt (question + the short-answer instruction)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    row = {"question_id": doc["question_id"], "prediction": results[0], "label": doc["label"], "split": doc["split"]}
    return {"pope_f1": row, "pope_accuracy": row}


def _scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return score_pope({r["question_id"]: r["prediction"] for r in rows}, {r["question_id"]: r["label"] for r in rows},
                      {r["question_id"]: r["split"] for r in rows})


def aggregate_f1(rows: list[dict[str, Any]]) -> float:
    return float(_scores(rows)["f1"])


def aggregate_accuracy(rows: list[dict[str, Any]]) -> float:
    return float(_scores(rows)["accuracy"])
