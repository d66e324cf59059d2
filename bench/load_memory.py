"""Host memory of loading a ~1B-parameter LLM as a training run does: fp32, bf16, and ZeRO-3 partitioned (2 ranks).

A Llama config (hidden 2048, 20 layers, vocab 32,000; about 1.0B parameters) is built from its config and saved in
bf16, as released checkpoints are; each mode then loads it through `vlm.assembly.load_llm` in a fresh process and
reports its resident memory after loading (anonymous and file-backed) and its peak (VmHWM). Under ZeRO-3 each rank
loads inside `DeepSpeedStrategy.model_init_context()` (transformers' zero.Init path) and also reports the parameter
elements it holds. Run: `python bench/load_memory.py [--layers 20] [--modes fp32,bf16,zero3]`; prints JSON lines.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def status_mb() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024 for key in ("VmHWM", "RssAnon", "RssFile")}


def build_checkpoint(directory: Path, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    for param in model.parameters():  # cheap fill: memory, not numerics, is measured
        param.data.normal_(0, 0.02)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def load(path: str, mode: str) -> None:
    import torch

    from vlm.config import VLMConfig
    from vlm.assembly import load_llm
    from vision_encoders.config import VisionEncoderConfig

    config = VLMConfig(vision=VisionEncoderConfig(spec="hf:x"), projector="mlp2x_gelu", llm=path, template="plain")
    before = status_mb()
    start = time.perf_counter()
    if mode == "zero3":
        from train.strategies.deepspeed_strategy import DeepSpeedStrategy

        strategy = DeepSpeedStrategy(str(ROOT / "configs" / "deepspeed" / "zero3.json"), micro_batch_size=1,
                                     global_batch_size=2, precision="fp32")
        with strategy.model_init_context():
            llm = load_llm(path, config, torch.float32)
        held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in llm.parameters())
        total = sum(int(getattr(p, "ds_numel", p.numel())) for p in llm.parameters())
    else:
        llm = load_llm(path, config, torch.float32 if mode == "fp32" else torch.bfloat16)
        held = total = sum(p.numel() for p in llm.parameters())
    after = status_mb()
    print(json.dumps({"mode": mode, "rank": int(os.environ.get("RANK", 0)), "load_s": time.perf_counter() - start,
                      "params": total, "params_held": held, "dtype": str(next(llm.parameters()).dtype),
                      "rss_anon_mb": after["RssAnon"], "rss_file_mb": after["RssFile"], "peak_rss_mb": after["VmHWM"],
                      "rss_anon_before_mb": before["RssAnon"]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--modes", default="fp32,bf16,zero3")
    parser.add_argument("--load", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        load(*args.load)
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    with tempfile.TemporaryDirectory(prefix="load_memory_") as tmp:
        n = build_checkpoint(Path(tmp), args.layers)
        print(json.dumps({"checkpoint_params": n, "checkpoint_dtype": "bfloat16"}), flush=True)
        for mode in args.modes.split(","):
            if mode == "zero3":
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                       "29533", __file__, "--load", tmp, mode]
            else:
                cmd = [sys.executable, __file__, "--load", tmp, mode]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode != 0 or not lines:
                print(json.dumps({"mode": mode, "error": out.stderr[-1500:]}), flush=True)
            for line in lines:
                print(line, flush=True)


if __name__ == "__main__":
    main()
