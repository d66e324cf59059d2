"""Phase 2 on the synthetic world with and without sequence packing at the same global batch: padding, samples per
row, tokens/s and the loss curve, from the runs' own metrics.

Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/packing.py --world DIR --base MODEL [--steps 40] [--repeats 2]`.
`DIR` is a `vlm synth` world, `MODEL` a `vlm build` of its backbones (random or pretrained, the timing is the
same). Each variant is `vlm train configs/synthetic_instruct.yaml` with overrides; variants run interleaved
`--repeats` times so that load from other jobs on a shared machine spreads over all of them. tokens/s is real
(unpadded) tokens over the step times, the first two steps of each run left out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "unpacked (micro 8 samples)": [],
    "packed 384 (micro 4 rows)": ["data.packing=true", "schedule.micro_batch_size=4"],
    "packed 2048 (micro 1 row)": ["data.packing=true", "data.pack_length=2048", "schedule.micro_batch_size=1"],
}


def train(world: Path, base: Path, out: Path, steps: int, extra: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "app.cli", "train", str(REPO / "configs/synthetic_instruct.yaml"),
           f"model.init_from={base}", f"data.data_path=[{world / 'instruct.json'}]",
           f"data.image_folder={world / 'images'}", f"feature_cache.dir={world / 'feature_cache'}",
           f"checkpoint.output_dir={out}", f"schedule.max_steps={steps}", "checkpoint.resume=none",
           "log.progress_bar=false", "log.tensorboard=false", "checkpoint.save_every=0", *extra]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def summary(rows: list[dict]) -> dict[str, float]:
    timed = rows[2:]
    return {"padding_ratio": statistics.mean(r["padding_ratio"] for r in timed),
            "samples_per_row": statistics.mean(r["samples_per_row"] for r in timed),
            "tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed),
            "mean_loss": statistics.mean(r["loss"] for r in rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_packing"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for k, (name, extra) in enumerate(VARIANTS.items()):
            rows = train(args.world.resolve(), args.base.resolve(), (args.out / f"{k}_{repeat}").resolve(),
                         args.steps, extra)
            results[name].append(summary(rows))
    for name, runs in results.items():
        line = {"variant": name, **{key: round(statistics.mean(r[key] for r in runs), 4) for key in runs[0]},
                "tokens_per_s_runs": [round(r["tokens_per_s"]) for r in runs]}
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
