"""The same phase-2 steps on 2 processes under DDP, ZeRO-2, ZeRO-3, FSDP2 (two reshard settings) and FSDP2 + compile:
tokens/s, each rank's peak memory and the per-step losses side by side, one JSON line per run (and one comparing the
losses).

Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/strategies.py [--steps 8] [--hidden 256] [--layers 4] [--repeats 1]`.
Strategies run interleaved `--repeats` times (load from other jobs on a shared machine spreads over all). Each is
one `torchrun --nproc_per_node=2` of this file as the worker (CPU, gloo, fp32 unless --gpu), over the same synthetic
phase-2 data and model (full LLM + projector, a frozen CLIP tower). tokens/s is real tokens over the step times of
steps 3 onward (step 1 holds compilation, step 2 allocator warm-up); peak memory is each rank's peak resident set
size (`ru_maxrss`, on a GPU the peak allocated memory of the last step) and, beside it, the resident size once the
libraries were imported, before the model loads (DeepSpeed's import alone weighs ~100 MB).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ZERO = REPO / "configs" / "deepspeed"
VARIANTS: dict[str, dict[str, Any]] = {
    "ddp": {"strategy": "ddp"},
    "zero2": {"strategy": "deepspeed", "deepspeed_config": str(ZERO / "zero2.json")},
    "zero3": {"strategy": "deepspeed", "deepspeed_config": str(ZERO / "zero3.json")},
    "fsdp2": {"strategy": "fsdp"},
    "fsdp2_keep": {"strategy": "fsdp", "fsdp": {"reshard_after_forward": False}},  # ZeRO-2-like: gathered to backward
    "fsdp2_compile": {"strategy": "fsdp", "compile": True},
}


def build_model(root: Path, hidden: int, layers: int) -> Path:
    """A Llama + CLIP VLM of the given width and depth, saved under `root/base` (random weights: the timing is the
    same as a trained model's)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from vision_encoders.config import VisionEncoderConfig
    from vlm.model import VisionLanguageModel
    from vlm.testing import make_tiny_tokenizer

    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                                     num_attention_heads=4, image_size=64, patch_size=8)).save_pretrained(root / "vit")
    tokenizer = make_tiny_tokenizer(root / "llm")
    LlamaForCausalLM(LlamaConfig(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                                 vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
                     ).save_pretrained(root / "llm")
    model = VisionLanguageModel.build(VisionEncoderConfig(spec=f"hf:{root / 'vit'}", select_layer=-2), "mlp2x_gelu",
                                      str(root / "llm"), "vicuna_v1")
    model.save(root / "base")
    return root / "base"


def train_config(base: Path, data: Path, images: Path, out: Path, steps: int, variant: dict[str, Any],
                 gpu: bool) -> dict[str, Any]:
    engine = {"precision": "auto" if gpu else "fp32", **variant}
    return {"recipe": "instruct", "model": {"init_from": str(base), "template": "vicuna_v1"},
            "data": {"data_path": [str(data)], "image_folder": str(images), "max_length": 512,
                     "audit": {"sample": 0}},
            "schedule": {"global_batch_size": 8, "micro_batch_size": 2, "max_steps": steps, "seed": 0},
            "optim": {"lr": 1e-4, "warmup_ratio": 0.0}, "engine": engine,
            "checkpoint": {"output_dir": str(out), "resume": "none", "save_every": 0},
            "log": {"tensorboard": False, "progress_bar": False}, "feature_cache": {"enabled": False}}


def resident_mb() -> float:
    """This process's resident set size now (Linux /proc), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(config_json: str, out_json: str) -> None:
    """Inside torchrun: train, then write this rank's metrics to OUT.<rank>."""
    import torch  # noqa: F401 (the libraries every strategy imports, before the baseline is read)
    import transformers  # noqa: F401

    from train.config import config_from_dict
    from train.recipes import run

    cfg = config_from_dict(json.loads(Path(config_json).read_text()))
    if cfg.engine.strategy == "deepspeed":
        from train.strategies.deepspeed_zero import import_deepspeed

        import_deepspeed()
    baseline = resident_mb()
    result = run(cfg)
    Path(f"{out_json}.{os.environ.get('RANK', '0')}").write_text(json.dumps({
        "losses": result.losses, "rss_after_imports_mb": round(baseline, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def launch(name: str, cfg: dict[str, Any], work: Path, gpu: bool) -> dict[str, Any]:
    """One strategy on 2 processes; its JSON line."""
    tag = Path(cfg["checkpoint"]["output_dir"]).name
    cfg_path, out = work / f"{tag}.json", work / f"{tag}_out.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if not gpu:
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "--worker", str(cfg_path), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"strategy": name, "error": done.stderr.strip().splitlines()[-1][-400:] if done.stderr else "failed"}
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    metrics = [json.loads(line) for line in (Path(cfg["checkpoint"]["output_dir"]) / "metrics.jsonl").read_text()
               .splitlines() if line.strip()]
    timed = metrics[2:] or metrics
    line = {"strategy": name,
            "tokens_per_s": round(sum(m["tokens"] for m in timed) / sum(m["step_time_s"] for m in timed), 1),
            "first_step_s": round(metrics[0]["step_time_s"], 2),
            "peak_rss_mb_per_rank": [r["peak_rss_mb"] for r in ranks],
            "rss_after_imports_mb_per_rank": [r["rss_after_imports_mb"] for r in ranks],
            "losses": [round(x, 7) for x in ranks[0]["losses"]]}
    if gpu:
        line["peak_gpu_mb_rank0"] = round(metrics[-1]["peak_mem_mb"], 1)
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma-separated strategies of " + ",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="on the visible GPUs (bf16 where supported), not the CPU")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    from feature_cache import write_align_data
    from train_throughput import write_instruct_data

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_strategies_"))
    work.mkdir(parents=True, exist_ok=True)
    base = build_model(work, args.hidden, args.layers)
    _, images = write_align_data(work, 24)
    data = write_instruct_data(work, images, args.records)
    lines = []
    for repeat in range(args.repeats):
        for name in args.only.split(","):
            out = work / f"run_{name}_{repeat}"
            if out.exists():
                raise SystemExit(f"{out} exists (its metrics would be appended to): give another --dir")
            cfg = train_config(base, data, images, out, args.steps, VARIANTS[name], args.gpu)
            lines.append({**launch(name, cfg, work, args.gpu), "repeat": repeat})
            print(json.dumps(lines[-1]), flush=True)
    done = [line for line in lines if "losses" in line and line["repeat"] == 0]
    if done:
        ref = done[0]
        diffs = {line["strategy"]: max(abs(a - b) / abs(b) for a, b in zip(line["losses"], ref["losses"]))
                 for line in done[1:]}
        print(json.dumps({"losses_max_rel_diff_vs": ref["strategy"], **{k: float(f"{v:.2e}") for k, v in diffs.items()}}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        sys.stdout.flush()
        os._exit(0)  # as tests/train/harness.py: no interpreter teardown after the process group closed
    raise SystemExit(main())
