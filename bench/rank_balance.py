"""Ranks' load balance of packed training: per step, max / mean across ranks of LLM tokens and of image tiles,
rows shared by count (each rank packs its equal share of samples) vs by cost (`instruct_data.rank_balance`), over
a whole epoch's plan, for pad data (one tile an image) and anyres data (2-10 tiles an image); JSON lines."""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from instruct_data.packing import PackedBatchSampler  # noqa: E402
from instruct_data.rank_balance import imbalance, row_loads  # noqa: E402
from instruct_data.samplers import ModalityLengthGroupedSampler  # noqa: E402

# LLaVA-NeXT-like anyres: 336 px tiles of 24x24 features, grids up to 3x3 (2 to 10 tiles with the base)
TILE, GRID_SIDE, PINPOINTS = 336, 24, "(1x1),...,(3x3)"


def anyres_costs(text_lengths: list[int], images: list[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """Signed lengths and tiles of the same records with anyres images: each record's text tokens plus the
    LLaVA-NeXT token count of its image at a size drawn per image (COCO-like: 320-1280 px wide, aspect 1:3-3:1)."""
    from vision_encoders.anyres import AnyresGeometry

    geometry = AnyresGeometry.build(PINPOINTS, TILE, GRID_SIDE)
    rng = random.Random(seed)
    sizes: dict[int, tuple[int, int]] = {}
    lengths, tiles = [], []
    for text, image in zip(text_lengths, images):
        if image < 0:
            lengths.append(-text)
            tiles.append(0)
            continue
        if image not in sizes:
            width = rng.randint(320, 1280)
            sizes[image] = (max(32, int(width / rng.uniform(1 / 3, 3))), width)
        lengths.append(text + geometry.num_tokens(sizes[image]))
        tiles.append(geometry.num_tiles(sizes[image]))
    return lengths, tiles


def plan_balance(lengths: list[int], tiles: list[int], *, balance: str, world: int, global_batch: int,
                 micro: int, pack_length: int, seed: int = 0) -> dict[str, Any]:
    """Per-step max/mean of tokens and tiles across `world` ranks over epoch 0 (mean and worst step), and the
    seconds one rank takes to plan the epoch."""
    step = global_batch // world
    ranks, seconds = [], 0.0
    for rank in range(world):
        sampler = ModalityLengthGroupedSampler(lengths, step, world_size=world, rank=rank, seed=seed)
        packer = PackedBatchSampler(sampler, lengths, step_size=step, pack_length=pack_length,
                                    rows_per_micro_batch=micro, micro_batches_per_step=step // micro,
                                    balance=balance, tiles=tiles)
        t0 = time.perf_counter()
        ranks.append(packer.epoch_batches(0))
        seconds = max(seconds, time.perf_counter() - t0)
    per_step = step // micro
    tok, til = [], []
    for s in range(len(ranks[0]) // per_step):
        loads = [[row_loads(row, lengths, tiles) for mb in batches[s * per_step:(s + 1) * per_step] for row in mb]
                 for batches in ranks]
        tok.append(imbalance([sum(t for t, _ in rank) for rank in loads]))
        til.append(imbalance([sum(v for _, v in rank) for rank in loads]))
    return {"steps": len(tok), "token_imbalance_mean": round(sum(tok) / len(tok), 4),
            "token_imbalance_max": round(max(tok), 4), "tile_imbalance_mean": round(sum(til) / len(til), 4),
            "tile_imbalance_max": round(max(til), 4), "plan_s_per_rank": round(seconds, 2)}


def dataset_costs(data: Path, images: Path, base: Path, cache: Path
                  ) -> tuple[list[int], list[int], list[int], int]:
    """Exact signed lengths, tiles and image numbers (-1: text-only) of the bench's records under its pad model
    (the length cache: computed once, then read), and its K image tokens an image."""
    from instruct_data.dataset import InstructDataset
    from instruct_data.length_cache import exact_lengths
    from instruct_data.sources import load_records
    from vlm.inputs import image_token_counter
    from vlm.model import VisionLanguageModel

    model = VisionLanguageModel.load(base)
    records = load_records(data)
    dataset = InstructDataset(records, model.config.template, model.tokenizer,
                              image_token_id=model.config.image_token_id, num_image_tokens=image_token_counter(model),
                              image_processor=model.image_processor, image_roots=[images], max_length=2048)
    lengths = exact_lengths(dataset, cache).tolist()
    tiles = dataset.tiles()
    image_of = []
    for i in range(len(dataset)):
        refs = records.conversation(i).images if tiles[i] else []
        image_of.append(int(Path(refs[0]).stem) if refs else -1)
    signed = [n if t else -n for n, t in zip(lengths, tiles)]
    return signed, tiles, image_of, int(model.config.num_image_tokens)


def run(data: Path, images: Path, base: Path, cache: Path, *, world: int = 2, global_batch: int = 128,
        micro: int = 4, emit: Any = print) -> None:
    lengths, tiles, image_of, k = dataset_costs(data, images, base, cache)
    text = [abs(n) - (k if t else 0) for n, t in zip(lengths, tiles)]
    cases = [("pad", lengths, tiles, 2048), ("anyres", *anyres_costs(text, image_of), 8192)]
    for name, ls, ts, pack_length in cases:
        for balance in ("count", "cost"):
            emit(what="rank_balance", data=name, ranks=world, balance=balance, global_batch=global_batch,
                 rows_per_micro_batch=micro, pack_length=pack_length,
                 **plan_balance(ls, ts, balance=balance, world=world, global_batch=global_batch, micro=micro,
                                pack_length=pack_length))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="a bench/data_scale.py work folder (kept with --dir)")
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    data = args.dir / f"mix{args.records}.json"

    def emit(**row: object) -> None:
        print(json.dumps({"records": args.records, **row}), flush=True)

    run(data, args.dir / "images", args.dir / "model" / "base", args.dir / "lengths_balance", world=args.procs,
        emit=emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
