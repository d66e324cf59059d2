"""`vlm eval run|score|table`: run a benchmark with a model, score any system's predictions, gather results."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.benchmarks import BENCHMARKS, BenchmarkPaths, get_benchmark, score_items
from eval.items import BenchmarkFileError
from vlm.config import DTYPE_CHOICES


def _add_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    p.add_argument("--data-root", type=Path, default=Path("."), help="folder holding the official files")
    p.add_argument("--split", default=None, help="benchmark split (default: the benchmark's usual one)")
    p.add_argument("--questions", type=Path, default=None, help="override the questions file / folder")
    p.add_argument("--annotations", type=Path, default=None, help="override the annotations file")
    p.add_argument("--image-root", type=Path, default=None, help="override the image folder")
    p.add_argument("--no-meteor", action="store_true", help="captions: skip METEOR (its Java start is slow)")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", required=True)
    run = sub.add_parser("run", help="answer a benchmark with a model, then score it")
    run.add_argument("--model", required=True, help="our checkpoint directory or a HF Llava directory")
    _add_paths(run)
    run.add_argument("--out", type=Path, default=None, help="output folder (default: eval_results/<model>/<bench>)")
    run.add_argument("--limit", type=int, default=None, help="only the first N questions")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--num-chunks", type=int, default=1)
    run.add_argument("--chunk-idx", type=int, default=0)
    run.add_argument("--max-new-tokens", type=int, default=None)
    run.add_argument("--blank-images", action="store_true", help="replace every image by a black one (blind baseline)")
    run.add_argument("--device", default=None)
    run.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                     help="auto (bfloat16 on a GPU, float32 on a CPU), bfloat16, float16 or float32")
    run.add_argument("--hf-template", default="vicuna_v1", help="template for a HF Llava directory's prompts")
    run.add_argument("--model-name", default=None, help="name in tables (default: the model folder's name)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--strict-fingerprint", "--strict", action="store_true",
                     help="stop (exit 2) when the model's preprocessing (pixels, token ids) drifted from its checkpoint's")
    run.add_argument("--no-finalize", action="store_true",
                     help="answer this chunk only; a later call without it merges the chunks and scores")
    score = sub.add_parser("score", help="score a predictions file of any system, no model loaded")
    _add_paths(score)
    score.add_argument("--predictions", type=Path, required=True)
    score.add_argument("--subset", action="store_true",
                       help="score only the questions that have a prediction (default: all must have one)")
    score.add_argument("--out", type=Path, default=None, help="scores JSON path (default: next to predictions)")
    score.add_argument("--model-name", default="external")
    table = sub.add_parser("table", help="markdown table of every scores.json under the given folders")
    table.add_argument("paths", type=Path, nargs="+")
    table.add_argument("--out", type=Path, default=None)


def _paths(args: argparse.Namespace) -> BenchmarkPaths:
    return BenchmarkPaths(args.data_root, args.split, args.questions, args.annotations, args.image_root)


def _run(args: argparse.Namespace) -> int:
    from eval.generation import LazyGenerator, load_generator
    from eval.runner import RunConfig, run

    bench = get_benchmark(args.benchmark)
    from vlm.loading import check_model_dir

    check_model_dir(args.model)  # fail before anything is written or loaded, not after the first batch
    name = args.model_name or Path(args.model).resolve().name
    out = args.out or Path("eval_results") / name / (bench.name + ("_blank" if args.blank_images else ""))
    config = RunConfig(bench.name, _paths(args), out, name, args.limit, args.batch_size, args.num_chunks,
                       args.chunk_idx, args.blank_images, not args.no_progress, not args.no_meteor,
                       not args.no_finalize)
    generate = LazyGenerator(lambda: load_generator(args.model, args.max_new_tokens or bench.max_new_tokens,
                                                    args.blank_images, args.device, args.hf_template,
                                                    args.dtype, args.strict_fingerprint))
    result = run(config, generate)
    if result.total and len(result.failed) == result.total:
        print(f"vlm eval run: every one of the {result.total} questions failed (first: "
              f"{next(iter(result.failed.values()))})", file=sys.stderr)
        return 1
    if result.row is None and args.no_finalize:
        print(f"chunk {args.chunk_idx + 1}/{args.num_chunks} answered: {result.predictions}")
    elif result.row is None:
        print(f"chunk {args.chunk_idx + 1}/{args.num_chunks} done: {result.predictions}; "
              "scores come when every chunk is done")
    else:
        print(result.row)
        print(f"scores: {out / 'scores.json'}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from eval.predictions import read_prediction_file, write_json
    from eval.report import markdown_row, scores_record

    bench = get_benchmark(args.benchmark)
    items = bench.load(_paths(args))
    preds = read_prediction_file(args.predictions)
    if args.subset:
        items = [it for it in items if it.key in preds]
        if not items:
            raise BenchmarkFileError(f"{args.predictions}: no prediction matches a question of {bench.name}")
    unknown = set(preds) - {it.key for it in items}
    if unknown and not args.subset:
        print(f"warning: {len(unknown)} prediction(s) match no question, e.g. {sorted(unknown)[:3]}", file=sys.stderr)
    scores = score_items(bench, items, preds, meteor=not args.no_meteor)
    record = scores_record(bench.name, args.split or bench.default_split, args.model_name, bench.headline, scores)
    out = args.out or args.predictions.with_name(args.predictions.stem + f".{bench.name}_scores.json")
    write_json(out, record)
    print(json.dumps(scores, indent=2))
    print(markdown_row(record))
    return 0


def _table(args: argparse.Namespace) -> int:
    from eval.report import results_table

    table = results_table(args.paths)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return {"run": _run, "score": _score, "table": _table}[args.eval_command](args)
    except (BenchmarkFileError, FileNotFoundError, ValueError) as err:
        print(f"vlm eval {args.eval_command}: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # e.g. Java missing for caption metrics, a model that cannot load
        print(f"vlm eval {args.eval_command}: {err}", file=sys.stderr)
        return 1
