"""The eval run: load a benchmark, answer in batches, append as it goes, resume, merge chunks, score."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eval.benchmarks import BenchmarkPaths, get_benchmark, score_items
from eval.predictions import append_records, read_done, repair_tail, write_json, write_records
from eval.report import markdown_row, scores_record
from eval.items import BenchmarkFileError, EvalItem, Failed


@dataclass
class RunConfig:
    """Everything that decides which questions are asked and where answers go."""

    benchmark: str
    paths: BenchmarkPaths
    out_dir: Path
    model_name: str = "model"
    limit: int | None = None
    batch_size: int = 8
    num_chunks: int = 1
    chunk_idx: int = 0
    blank_images: bool = False
    progress: bool = True
    meteor: bool = True
    finalize: bool = True  # False: only answer this chunk (parallel chunk runs leave merging to one last call)
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a restarted run to reuse earlier predictions."""
        return {"benchmark": self.benchmark, "split": self.paths.split, "model": self.model_name,
                "limit": self.limit, "num_chunks": self.num_chunks, "blank_images": self.blank_images, **self.extra}


@dataclass
class RunResult:
    """Where the outputs are; `scores` is None until every chunk is done."""

    predictions: Path
    answered: int
    seconds: float
    scores: dict[str, Any] | None = None
    row: str | None = None
    total: int = 0  # questions of this run (the whole benchmark once merged, else this chunk)
    failed: dict[str, str] = field(default_factory=dict)  # question id -> why it could not be answered


def chunk(items: list[EvalItem], num_chunks: int, chunk_idx: int) -> list[EvalItem]:
    """Contiguous chunk `chunk_idx` of `num_chunks` (sizes differ by at most one... ceil-sized as LLaVA)."""
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"chunk index {chunk_idx} not in [0, {num_chunks})")
    size = math.ceil(len(items) / num_chunks)
    return items[chunk_idx * size:(chunk_idx + 1) * size]


def _chunk_file(out: Path, k: int, i: int) -> Path:
    return out / "chunks" / f"{i}_of_{k}.jsonl"


def _check_fingerprint(out: Path, fp: dict[str, Any]) -> None:
    import json

    path = out / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != fp:
            diff = {k: (old.get(k), v) for k, v in fp.items() if old.get(k) != v}
            raise BenchmarkFileError(f"{out} holds predictions of a different run (differs in {diff}); "
                                     "use another --out or delete it")
    else:
        write_json(path, fp)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="q", desc="eval", disable=not enabled, dynamic_ncols=True)


def run(config: RunConfig, generate: Callable[[list[EvalItem]], list[str | Failed]]) -> RunResult:
    """Answer this chunk's unanswered questions; when all chunks are complete, merge and score.

    An item the generator cannot answer (a `Failed`: its image is missing, corrupt, ...) is recorded with the
    reason, counted, scored as wrong, and asked again by the next run over the same folder."""
    bench = get_benchmark(config.benchmark)
    items = bench.load(config.paths)
    if config.limit is not None:
        items = items[: config.limit]
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        raise BenchmarkFileError(f"{config.benchmark}: duplicate question ids in the benchmark files")
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(out, config.fingerprint())
    mine = chunk(items, config.num_chunks, config.chunk_idx)
    pred_file = _chunk_file(out, config.num_chunks, config.chunk_idx)
    repair_tail(pred_file)
    done = read_done(pred_file)
    todo = [it for it in mine if it.key not in done or "failed" in done[it.key]]
    start = time.perf_counter()
    bar = _progress(len(mine), config.progress)
    bar.update(len(mine) - len(todo))
    for b in range(0, len(todo), config.batch_size):
        batch = todo[b:b + config.batch_size]
        texts = generate(batch)
        if len(texts) != len(batch):
            raise RuntimeError(f"generator returned {len(texts)} answers for {len(batch)} questions")
        append_records(pred_file, (_row(config, it, t) for it, t in zip(batch, texts, strict=True)))
        bar.update(len(batch))
    bar.close()
    if todo:
        _keep_preprocessing_fingerprint(out, getattr(generate, "preprocessing_fingerprint", None))
    seconds = time.perf_counter() - start
    rows = read_done(pred_file)
    failed = {it.key: str(rows[it.key]["failed"]) for it in mine if "failed" in rows.get(it.key, {})}
    result = RunResult(pred_file, len(todo), seconds, total=len(mine), failed=failed)
    if config.progress and todo:
        print(f"{len(todo)} questions in {seconds:.1f} s ({len(todo) / max(seconds, 1e-9):.2f} questions/s)")
    if not config.finalize:
        _say_failed(result)
        return result
    merged = _merge(out, items, config.num_chunks)
    if merged is None:
        _say_failed(result)
        return result
    preds, result.failed = merged
    result.total = len(items)
    _say_failed(result)
    return finish(config, items, preds, result)


def _keep_preprocessing_fingerprint(out: Path, current: dict[str, Any] | None) -> None:
    """Store the preprocessing fingerprint the answers were generated under (scores.json carries it); answers
    of an earlier run in the same folder under other pixels or ids are named as drift."""
    if current is None:  # a stand-in generator (tests) has none
        return
    from vlm import fingerprint

    stored = fingerprint.load(out)
    if stored is not None:
        fingerprint.report(stored, current, f"{out} (the earlier answers in this folder)")
    if stored != current:
        fingerprint.save(current, out)


def _row(config: RunConfig, item: EvalItem, answer: str | Failed) -> dict[str, Any]:
    prompt = item.prompt.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate stays writable
    row = {"question_id": item.question_id, "prompt": prompt, "text": answer, "model_id": config.model_name}
    if isinstance(answer, Failed):
        row.update(text="", failed=answer.reason)
    return row


def _say_failed(result: RunResult) -> None:
    if result.failed:
        qid, reason = next(iter(result.failed.items()))
        print(f"{len(result.failed)} of {result.total} questions failed and are scored as wrong "
              f"(first: {qid}: {reason}); each is marked 'failed' in {result.predictions.name}, "
              "and a rerun over the same --out asks them again")


def _merge(out: Path, items: list[EvalItem], k: int) -> tuple[dict[str, str], dict[str, str]] | None:
    """All chunks' answers in benchmark order, written to predictions.jsonl; None while any is missing."""
    rows: dict[str, dict[str, Any]] = {}
    for i in range(k):
        rows.update(read_done(_chunk_file(out, k, i)))
    if any(it.key not in rows for it in items):
        return None
    write_records(out / "predictions.jsonl", (rows[it.key] for it in items))
    failed = {it.key: str(rows[it.key]["failed"]) for it in items if "failed" in rows[it.key]}
    return {it.key: str(rows[it.key]["text"]) for it in items}, failed


def finish(config: RunConfig, items: list[EvalItem], preds: dict[str, str], result: RunResult) -> RunResult:
    """Submission file (if the benchmark has one), scores JSON and the one-line markdown row.

    Failed items (`result.failed`) are scored as wrong: they get the benchmark's `failed_answer`."""
    bench = get_benchmark(config.benchmark)
    out = config.out_dir
    if bench.submission is not None:
        write_json(out / bench.submission_name, bench.submission(items, preds))
    scored = {it.key: bench.failed_answer(it) if it.key in result.failed else preds[it.key] for it in items}
    try:
        scores = score_items(bench, items, scored, meteor=config.meteor)
    except BenchmarkFileError as err:  # e.g. a test split without answers: the submission is the result
        print(f"not scored locally: {err}")
        return result
    split = config.paths.split or ("test" if config.paths.is_world() else bench.default_split)
    record = scores_record(bench.name, split, config.model_name, bench.headline, scores,
                           blank_images=config.blank_images, limit=config.limit)
    record["failed"] = len(result.failed)  # included in n, each scored as wrong
    record["failed_items"] = dict(result.failed)
    from vlm import fingerprint

    record["preprocessing_fingerprint"] = fingerprint.load(out)  # None: no answer generated by a model here
    write_json(out / "scores.json", record)
    row = markdown_row(record)
    (out / "results.md").write_text(row + "\n", encoding="utf-8")
    result.scores, result.row = record, row
    return result


def config_dict(config: RunConfig) -> dict[str, Any]:
    """JSON-able view of a config (for logs)."""
    d = asdict(config)
    d["paths"] = {k: str(v) if v is not None else None for k, v in asdict(config.paths).items()}
    d["out_dir"] = str(config.out_dir)
    return d
