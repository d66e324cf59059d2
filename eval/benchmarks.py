"""Registry of benchmarks by exact name: where their files live, how to load, score and submit them."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.loaders import chair as chair_loaders
from eval.loaders import choice as choice_loaders
from eval.loaders import text as text_loaders
from eval.loaders import vqa as vqa_loaders
from eval.loaders import yesno
from eval.metrics.answer_normalize import evalai_normalize
from eval.metrics.captions import score_captions
from eval.metrics.chair import ObjectVocabulary, score_chair
from eval.metrics.choice import ChoiceQuestion, score_choice, score_scienceqa
from eval.metrics.exact_match import gqa_normalize, score_gqa, score_text_qa
from eval.metrics.mme import MMEQuestion, score_mme
from eval.metrics.pope import score_pope
from eval.metrics.vqa import VQAGroundTruth, score_vqa
from eval.items import BenchmarkFileError, EvalItem, read_json


@dataclass(frozen=True)
class BenchmarkPaths:
    """Where a benchmark's files are: a data root plus optional explicit overrides."""

    data_root: Path
    split: str | None = None
    questions: Path | None = None
    annotations: Path | None = None
    image_root: Path | None = None

    def bench_dir(self, sub: str) -> Path:
        """`<root>/eval/<sub>` inside a synthetic world, else the root itself."""
        world = self.data_root / "eval" / sub
        return world if world.is_dir() else self.data_root

    def is_world(self) -> bool:
        """Whether the data root is a synthetic world (`vlm synth --out DIR`)."""
        return (self.data_root / "world.json").is_file()

    def images(self, *candidates: str) -> Path:
        """Explicit image root; else a world's `images/test`; else the first existing candidate folder."""
        if self.image_root is not None:
            return self.image_root
        if self.is_world():
            return self.data_root / "images" / "test"
        return self.pick(None, self.data_root, *candidates, "images", ".")

    def pick(self, override: Path | None, base: Path, *names: str) -> Path:
        """The override, else the first of `names` that exists in `base` (else the first, for the error)."""
        if override is not None:
            return override
        return next((base / n for n in names if (base / n).exists()), base / names[0])


Scorer = Callable[[list[EvalItem], Mapping[str, str]], dict[str, Any]]
Submitter = Callable[[list[EvalItem], Mapping[str, str]], Any]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: loader, scorer, the headline metric reported in tables, and its submission format."""

    name: str
    load: Callable[[BenchmarkPaths], list[EvalItem]]
    score: Scorer
    headline: str
    default_split: str
    max_new_tokens: int = 16
    submission: Submitter | None = None
    submission_name: str = ""
    # The answer scored for an item that could not be answered: one the scorer counts as wrong.
    failed_answer: Callable[[EvalItem], str] = lambda item: ""


def _needs_gold(items: list[EvalItem], key: str, name: str) -> None:
    if any(it.meta.get(key) is None for it in items):
        raise BenchmarkFileError(f"{name}: these questions carry no answers (a test split?): produce the "
                                 "submission file and score it on the official server")


# --- loaders ---------------------------------------------------------------------------------------
def _load_vqav2(p: BenchmarkPaths) -> list[EvalItem]:
    split = p.split or "val2014"
    base = p.bench_dir("vqav2")
    questions = p.pick(p.questions, base, "questions.json", f"v2_OpenEnded_mscoco_{split}_questions.json")
    annotations = p.pick(p.annotations, base, "annotations.json", f"v2_mscoco_{split}_annotations.json")
    items = vqa_loaders.load_vqav2(questions, annotations if annotations.is_file() else None, p.images(split), split)
    groups = base / "splits.json"  # the synthetic world's seen / held-out label per question
    if p.questions is None and groups.is_file():
        labels = read_json(groups)
        for it in items:
            it.meta["group"] = labels.get(it.key, "")
    return items


def _load_gqa(p: BenchmarkPaths) -> list[EvalItem]:
    split = p.split or "testdev"
    return vqa_loaders.load_gqa(p.pick(p.questions, p.data_root, f"{split}_balanced_questions.json"), p.images())


def _load_textvqa(p: BenchmarkPaths) -> list[EvalItem]:
    split = p.split or "val"
    file = p.pick(p.questions, p.data_root, f"TextVQA_0.5.1_{split}.json")
    image_root = p.image_root or p.pick(None, p.data_root, "train_images", "images")
    ocr = p.annotations or p.data_root / f"llava_textvqa_{split}_v051_ocr.jsonl"  # LLaVA's prompts, if present
    return vqa_loaders.load_textvqa(file, image_root, ocr if ocr.is_file() else None)


def _load_vizwiz(p: BenchmarkPaths) -> list[EvalItem]:
    split = p.split or "val"
    file = p.pick(p.questions, p.data_root, f"Annotations/{split}.json", f"{split}.json")
    return vqa_loaders.load_vizwiz(file, p.image_root or p.pick(None, p.data_root, split, "images"))


def _load_pope(p: BenchmarkPaths) -> list[EvalItem]:
    splits = yesno.POPE_SPLITS if p.split in (None, "all") else tuple(p.split.split(","))
    base = p.questions or p.bench_dir("pope")
    return yesno.load_pope(base, p.images("val2014"), splits)


def _load_mme(p: BenchmarkPaths) -> list[EvalItem]:
    return yesno.load_mme(p.pick(p.questions, p.data_root, "MME_Benchmark_release_version", "."))


def _load_scienceqa(p: BenchmarkPaths) -> list[EvalItem]:
    base = p.bench_dir("scienceqa")
    return choice_loaders.load_scienceqa(p.pick(p.questions, base, "problems.json"),
                                         p.pick(p.annotations, base, "pid_splits.json"),
                                         p.image_root or p.pick(None, base, "images", "."), p.split or "test")


def _load_mmbench(p: BenchmarkPaths) -> list[EvalItem]:
    split = p.split or "dev"
    return choice_loaders.load_mmbench(p.pick(p.questions, p.data_root, f"mmbench_{split}_20230712.tsv",
                                              f"mmbench_{split}.tsv"))


def _load_seed(p: BenchmarkPaths) -> list[EvalItem]:
    image_root = p.image_root or p.pick(None, p.data_root, "SEED-Bench-image", "images")
    return choice_loaders.load_seed(p.pick(p.questions, p.data_root, "SEED-Bench.json"), image_root)


def _load_coco(p: BenchmarkPaths) -> list[EvalItem]:
    split = p.split or "test"
    base = p.bench_dir("coco")
    file = p.pick(p.annotations or p.questions, base, f"captions_{split}.json", "dataset_coco.json",
                  "captions_val2014.json")
    return text_loaders.load_coco_captions(file, p.images("val2014"), split)


def _load_chair(p: BenchmarkPaths) -> list[EvalItem]:
    split = p.split or "test"
    base = p.bench_dir("chair")
    file = p.pick(p.annotations or p.questions, base, f"instances_{split}.json", "instances_val2014.json")
    return chair_loaders.load_chair(file, p.images("val2014"))


def _load_llava_jsonl(p: BenchmarkPaths) -> list[EvalItem]:
    if p.questions is None:
        raise BenchmarkFileError("llava_jsonl needs --questions FILE (LLaVA's question JSONL)")
    return text_loaders.load_llava_jsonl(p.questions, p.images())


def _load_text_qa(p: BenchmarkPaths) -> list[EvalItem]:
    return text_loaders.load_text_qa(p.pick(p.questions, p.bench_dir("text"), "questions.jsonl"))


# --- scorers ---------------------------------------------------------------------------------------
def _score_vqa(items: list[EvalItem], preds: Mapping[str, str], *, evalai: bool, name: str) -> dict[str, Any]:
    _needs_gold(items, "answers", name)
    gt = {it.key: VQAGroundTruth(tuple(it.meta["answers"]), it.meta.get("question_type", ""),
                                 it.meta.get("answer_type", "")) for it in items}
    scores = score_vqa(preds, gt, evalai=evalai)
    groups = sorted({it.meta["group"] for it in items if "group" in it.meta})
    if groups:  # per seen / held-out group: the same scorer on each part
        scores["per_group"] = {g: score_vqa(preds, {it.key: gt[it.key] for it in items if it.meta.get("group") == g},
                                            evalai=evalai)["accuracy"] for g in groups}
    return scores


def _score_gqa(items: list[EvalItem], preds: Mapping[str, str]) -> dict[str, Any]:
    _needs_gold(items, "answer", "gqa")
    return score_gqa(preds, {it.key: it.meta["answer"] for it in items}, {it.key: it.meta["type"] for it in items})


def _score_pope(items: list[EvalItem], preds: Mapping[str, str]) -> dict[str, Any]:
    _needs_gold(items, "label", "pope")
    return score_pope(preds, {it.key: it.meta["label"] for it in items}, {it.key: it.meta["split"] for it in items})


def _score_mme(items: list[EvalItem], preds: Mapping[str, str]) -> dict[str, Any]:
    qs = {it.key: MMEQuestion(it.meta["answer"], it.meta["subtask"], it.meta["image_name"]) for it in items}
    return score_mme(preds, qs)


def _score_sqa(items: list[EvalItem], preds: Mapping[str, str]) -> dict[str, Any]:
    return score_scienceqa(preds, {it.key: (it.meta["answer"], it.meta["n_choices"]) for it in items})


def _score_choice(items: list[EvalItem], preds: Mapping[str, str], *, circular: bool, name: str) -> dict[str, Any]:
    _needs_gold(items, "answer", name)
    qs = {it.key: ChoiceQuestion(tuple(it.meta["options"]), it.meta["answer"], str(it.meta.get("group", "")),
                                 it.meta.get("category", "")) for it in items}
    return score_choice(preds, qs, circular=circular)


def _score_captions(items: list[EvalItem], preds: Mapping[str, str], meteor: bool = True) -> dict[str, Any]:
    return score_captions(preds, {it.key: it.meta["references"] for it in items}, meteor=meteor)


def _score_chair(items: list[EvalItem], preds: Mapping[str, str]) -> dict[str, Any]:
    vocabulary = ObjectVocabulary(items[0].meta["categories"] if items else ())
    return score_chair(preds, {it.key: it.meta["objects"] for it in items}, vocabulary)


def _score_exact(items: list[EvalItem], preds: Mapping[str, str]) -> dict[str, Any]:
    _needs_gold(items, "answer", "text_qa / llava_jsonl")
    return score_text_qa(preds, {it.key: str(it.meta["answer"]) for it in items})


# --- submissions -----------------------------------------------------------------------------------
def _submit_vqav2(items: list[EvalItem], preds: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"question_id": it.question_id, "answer": evalai_normalize(preds[it.key])} for it in items]


def _submit_gqa(items: list[EvalItem], preds: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"questionId": it.question_id, "prediction": gqa_normalize(preds[it.key])} for it in items]


def _submit_vizwiz(items: list[EvalItem], preds: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"image": it.question_id, "answer": evalai_normalize(preds[it.key])} for it in items]


def _submit_captions(items: list[EvalItem], preds: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"image_id": it.question_id, "caption": preds[it.key]} for it in items]


def _submit_seed(items: list[EvalItem], preds: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"question_id": it.question_id, "prediction": preds[it.key]} for it in items]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("vqav2", _load_vqav2, lambda i, p: _score_vqa(i, p, evalai=False, name="vqav2"), "accuracy",
                  "val2014", submission=_submit_vqav2, submission_name="vqav2_results.json"),
        Benchmark("gqa", _load_gqa, _score_gqa, "accuracy", "testdev", submission=_submit_gqa,
                  submission_name="testdev_balanced_predictions.json"),
        Benchmark("textvqa", _load_textvqa, lambda i, p: _score_vqa(i, p, evalai=True, name="textvqa"),
                  "accuracy", "val"),
        Benchmark("vizwiz", _load_vizwiz, lambda i, p: _score_vqa(i, p, evalai=True, name="vizwiz"), "accuracy",
                  "val", submission=_submit_vizwiz, submission_name="vizwiz_results.json"),
        # POPE's parser reads anything without "no" as yes: a failed item gets the opposite of its label.
        Benchmark("pope", _load_pope, _score_pope, "f1", "all",
                  failed_answer=lambda item: "yes" if item.meta.get("label") == "no" else "no"),
        Benchmark("mme", _load_mme, _score_mme, "perception", "test"),
        Benchmark("scienceqa_img", _load_scienceqa, _score_sqa, "accuracy", "test"),
        Benchmark("mmbench", _load_mmbench, lambda i, p: _score_choice(i, p, circular=True, name="mmbench"),
                  "circular_accuracy", "dev"),
        Benchmark("seed", _load_seed, lambda i, p: _score_choice(i, p, circular=False, name="seed"), "accuracy",
                  "image", submission=_submit_seed, submission_name="seed_predictions.json"),
        Benchmark("coco_captions", _load_coco, _score_captions, "CIDEr", "test", max_new_tokens=48,
                  submission=_submit_captions, submission_name="captions_results.json"),
        # Lower is better for the headline CHAIR_s; recall (higher is better) sits beside it.
        Benchmark("chair", _load_chair, _score_chair, "CHAIR_s", "test", max_new_tokens=96),
        Benchmark("llava_jsonl", _load_llava_jsonl, _score_exact, "accuracy", "test", max_new_tokens=128),
        Benchmark("text_qa", _load_text_qa, _score_exact, "accuracy", "test", max_new_tokens=32),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """Exact-name lookup; an unknown name lists the known ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def score_items(
    bench: Benchmark, items: list[EvalItem], preds: Mapping[str, str], *, meteor: bool = True
) -> dict[str, Any]:
    """Score with the benchmark's scorer; `meteor=False` skips METEOR's slow Java start (captions only)."""
    if bench.name == "coco_captions":
        return _score_captions(items, preds, meteor=meteor)
    return bench.score(items, preds)
