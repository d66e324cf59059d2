"""Data pipeline bench: records/s through parse -> template -> tokenize -> images -> collate, and padding with/without grouping."""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from instruct_data.collate import Collator
from instruct_data.dataset import InstructDataset, SkipLog
from instruct_data.sources import load_records
from instruct_data.samplers import LengthGroupedSampler, ModalityLengthGroupedSampler
from conversation.tokenize import tokenize_conversation

WORDS = ("the a red blue green square circle triangle small large left right top bottom of in on is are there "
         "what how many color shape image picture shows object near next to behind describe detail one two three").split()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def make_records(n: int, n_images: int, rng: random.Random) -> list[dict]:
    """A realistic mix: 50% short VQA (1-4 turns), 30% long image conversations, 20% long text-only chats."""
    records = []
    for i in range(n):
        kind = rng.random()
        rec: dict = {"id": f"r{i}"}
        if kind < 0.5:
            turns = [(_sentence(rng, 4, 10) + "\nAnswer the question using a single word or phrase.", _sentence(rng, 1, 3))
                     for _ in range(rng.randint(1, 4))]
        elif kind < 0.8:
            turns = [(_sentence(rng, 8, 20), " ".join(_sentence(rng, 10, 25) for _ in range(rng.randint(2, 6))))
                     for _ in range(rng.randint(1, 3))]
        else:
            turns = [(_sentence(rng, 10, 40), " ".join(_sentence(rng, 10, 25) for _ in range(rng.randint(3, 12))))
                     for _ in range(rng.randint(1, 5))]
        conv = []
        for t, (q, a) in enumerate(turns):
            conv += [{"from": "human", "value": ("<image>\n" if t == 0 and kind < 0.8 else "") + q}, {"from": "gpt", "value": a}]
        rec["conversations"] = conv
        if kind < 0.8:
            rec["image"] = f"img{rng.randrange(n_images)}.jpg"
        records.append(rec)
    return records


def make_images(folder: Path, n: int, rng: random.Random) -> None:
    for i in range(n):
        w, h = rng.randint(320, 640), rng.randint(240, 480)
        arr = np.random.default_rng(i).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.jpg", quality=90)


def image_processor(size: int):
    from vision_encoders.preprocess import ImageProcessor

    return ImageProcessor(size=size, mean=(0.4815, 0.4578, 0.4082), std=(0.2686, 0.2613, 0.2758))


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / padded


def run_loader(ds: InstructDataset, batch_size: int, workers: int, pad_id: int, limit: int) -> tuple[float, int, SkipLog]:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=Collator(pad_id),
                        sampler=RandomSampler(range(limit), generator=torch.Generator().manual_seed(0)))
    log = SkipLog()
    n = 0
    start = time.perf_counter()
    for batch in loader:
        n += len(batch.ids)
        log.add_batch(batch)
    return time.perf_counter() - start, n, log


# VmHWM, not ru_maxrss: a child's ru_maxrss starts from the parent's RSS at fork time.
_RSS_PROBE = (
    "import re, sys, time\n"
    "from instruct_data.sources import load_records\n"
    "import json\n"
    "load = (lambda p: json.load(open(p[5:]))) if sys.argv[1].startswith('json:') else load_records\n"
    "t = time.perf_counter(); src = load(sys.argv[1]) if sys.argv[1] != '-' else None\n"
    "dt = time.perf_counter() - t\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "print(len(src) if src else 0, dt, hwm)\n"
)


def _probe(path: str) -> tuple[int, float, int]:
    import subprocess

    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, path], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1]), int(out[2])


def bench_index(folder: Path, records: list[dict], n: int) -> None:
    """Index time and peak RSS (a fresh process each) for n/4 and n records: memory should stay flat."""
    _, _, base_kb = _probe("-")
    for count in (n // 4, n):
        path = folder / f"index{count}.json"
        with open(path, "w") as fh:
            fh.write("[" + ",\n".join(json.dumps(records[i % len(records)]) for i in range(count)) + "]")
        size_mb = path.stat().st_size / 1e6
        got, dt, rss_kb = _probe(str(path))
        print(f"index: {got} records ({size_mb:.0f} MB JSON list) in {dt:.1f} s = {got / dt:,.0f} records/s; "
              f"peak RSS above an idle interpreter {(rss_kb - base_kb) / 1e3:.1f} MB")
    _, dt, rss_kb = _probe(f"json:{path}")
    print(f"  for comparison, json.load of the {n}-record list: {dt:.1f} s, peak RSS above idle {(rss_kb - base_kb) / 1e3:.1f} MB")
    for count in (n // 4, n):
        (folder / f"index{count}.json").unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--num-image-tokens", type=int, default=576)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--loader-records", type=int, default=512, help="records pushed through the DataLoader per run")
    ap.add_argument("--index-records", type=int, default=100_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(0)
    from synthetic.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        make_images(folder / "images", args.images, rng)
        records = make_records(args.records, args.images, rng)
        (folder / "data.json").write_text(json.dumps(records))
        tok = train_tokenizer([_sentence(rng, 5, 30) for _ in range(2000)], vocab_size=512)
        image_id = tok.convert_tokens_to_ids("<image>")
        src = load_records(folder / "data.json", image_roots=[folder / "images"])
        ds = InstructDataset(src, "vicuna_v1", tok, image_token_id=image_id, num_image_tokens=args.num_image_tokens,
                             image_processor=image_processor(args.image_size), max_length=args.max_length)
        print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cpu cores {os.cpu_count()}, "
              f"load average {os.getloadavg()[0]:.1f}, {args.records} records, K={args.num_image_tokens}, images {args.image_size}px")

        t = time.perf_counter()
        exact = [len(tokenize_conversation(src.conversation(i), "vicuna_v1", tok, image_token_id=image_id,
                                           num_image_tokens=args.num_image_tokens, max_length=args.max_length).input_ids)
                 for i in range(len(src))]
        dt = time.perf_counter() - t
        print(f"parse+template+tokenize only: {len(src) / dt:,.0f} records/s")
        process = image_processor(args.image_size)
        from conversation.images import load_image

        t = time.perf_counter()
        for i in range(args.images):
            process(load_image(folder / "images" / f"img{i}.jpg"))
        print(f"image load + preprocess only: {args.images / (time.perf_counter() - t):,.1f} images/s")
        for workers in args.workers:
            dt, n, log = run_loader(ds, args.batch_size, workers, tok.pad_token_id, min(args.loader_records, len(ds)))
            print(f"full pipeline (+ image load/preprocess + collate), workers={workers}: {n / dt:,.1f} records/s "
                  f"({n} records, {log.summary()})")

        est = ds.modality_lengths()
        est_err = np.mean([abs(abs(e) - x) / x for e, x in zip(est, exact)])
        print(f"length estimate (word count based) mean relative error vs exact: {est_err:.1%}")
        ws, bs = args.world_size, args.batch_size
        rand = [int(i) for i in np.random.default_rng(0).permutation(len(exact))]
        rand = rand[: len(rand) - len(rand) % (ws * bs)]
        rows = {"random (no grouping)": [rand[i:i + bs] for i in range(0, len(rand), bs)]}
        for name, cls in (("length-grouped", LengthGroupedSampler), ("modality+length-grouped", ModalityLengthGroupedSampler)):
            batches = []
            for r in range(ws):
                order = list(cls(est, bs, world_size=ws, rank=r, seed=0, drop_last=True))
                batches += [order[i:i + bs] for i in range(0, len(order), bs)]
            rows[name] = batches
        for name, batches in rows.items():
            print(f"padding fraction, {name} (batch {bs} x {ws} ranks, sampler sees estimates): {padding_fraction(batches, exact):.1%}")
        bench_index(folder, records, args.index_records)
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
