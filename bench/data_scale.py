"""LLaVA-scale data bench: validate / audit (1 vs N workers), time to the first step (unpacked, packed cold and
warm length cache, 1 and 2 processes) and the ranks' load balance of packed steps (by count vs by cost) on a
generated llava_v1_5_mix665k-shaped record file; JSON lines on stdout."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/data_scale.py`: its sibling benches import as `bench.*`
    sys.path.insert(0, str(REPO))
SHORT = "\nAnswer the question using a single word or phrase."
SYLLABLES = "ka lo mi nu pe ra si to vu we xa yo ze bra cli dro fen gus hat jin kor lum mes nop qui rst".split()


# ------------------------------------------------------------------------------------------------- generator
def make_words(rng: random.Random, n: int = 6000) -> list[str]:
    """Pseudo-words of 1-4 syllables: the tokenizer splits the rarer ones, as a real vocabulary does."""
    words = {"".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))) for _ in range(3 * n)}
    return sorted(words)[:n]


def _text(rng: random.Random, words: list[str], lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    # Zipf-ish: frequent words often, rare ones sometimes
    picked = [words[min(int(rng.paretovariate(1.2)) - 1, len(words) - 1)] if rng.random() < 0.7
              else rng.choice(words) for _ in range(n)]
    return " ".join(picked).capitalize() + "."


def make_record(i: int, rng: random.Random, words: list[str], n_images: int) -> dict:
    """6% text-only ShareGPT chats of up to 8 long turns; the rest 1-10 VQA turns on one image, half of them with
    the short-answer prompt (one-word answers), half with sentence answers."""
    if rng.random() < 0.06:
        turns = [(_text(rng, words, 10, 80), _text(rng, words, 80, 400)) for _ in range(rng.randint(1, 8))]
        conv = [m for q, a in turns for m in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
        return {"id": f"sg{i}", "model": "", "conversations": conv}
    short = rng.random() < 0.5
    conv = []
    for t in range(rng.randint(1, 10)):
        q = _text(rng, words, 4, 14) + (SHORT if short else "")
        a = _text(rng, words, 1, 3) if short else _text(rng, words, 10, 60)
        conv += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + q}, {"from": "gpt", "value": a}]
    return {"id": f"{i:012d}", "image": f"coco/train2017/{rng.randrange(n_images):012d}.jpg", "conversations": conv}


def write_records(path: Path, n: int, n_images: int, words: list[str], seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        for i in range(n):
            fh.write(("" if i == 0 else ",\n") + json.dumps(make_record(i, rng, words, n_images)))
        fh.write("\n]\n")


def write_images(root: Path, n: int, seed: int = 0) -> None:
    from PIL import Image

    rng = random.Random(seed)
    folder = root / "coco" / "train2017"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        w, h = rng.randint(40, 96), rng.randint(32, 80)
        Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(
            folder / f"{k:012d}.jpg", quality=70)


def build_model(out: Path, words: list[str], vocab_size: int, seed: int = 0) -> Path:
    """A BPE trained here on the generator's words, a 2-layer Llama over it, a tiny CLIP (16 image tokens)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from vision_encoders.config import VisionEncoderConfig
    from vision_encoders.testing import make_tiny_clip
    from vlm.model import VisionLanguageModel

    rng = random.Random(seed)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [_text(rng, words, 20, 60) for _ in range(4000)] + [SHORT, "USER: ASSISTANT: A chat between"]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    llm_dir = out / "llm"
    fast.save_pretrained(llm_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=4096, vocab_size=len(fast),
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(llm_dir, safe_serialization=True)
    vision = VisionEncoderConfig(spec=make_tiny_clip(out / "clip", seed=seed), select_layer=-2)
    model = VisionLanguageModel.build(vision, "mlp2x_gelu", str(llm_dir), "vicuna_v1")
    model.save(out / "base")
    return out / "base"


# ------------------------------------------------------------------------------------------------- measuring
def measure(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """Wall seconds and the largest process's peak RSS (MB) of a command and its children."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"wall_s": None, "rc": "timeout", "error": err[-500:]}
    wall = time.perf_counter() - t0
    # RUSAGE_CHILDREN: the largest max RSS of any child waited for so far; each measure runs in a fresh wrapper
    return {"wall_s": round(wall, 2), "rc": proc.returncode, **({"error": err[-800:]} if proc.returncode > 1 else {})}


def measured(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """`measure` in a wrapper process, so the peak RSS is this command's own (RUSAGE_CHILDREN of the wrapper)."""
    code = ("import json,resource,sys;sys.path.insert(0,%r);from bench.data_scale import measure;"
            "r=measure(json.loads(sys.argv[1]),None,float(sys.argv[2]));"
            "r['peak_rss_mb']=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024,1);"
            "print(json.dumps(r))" % str(REPO))
    done = subprocess.run([sys.executable, "-c", code, json.dumps(cmd), str(timeout)], env=env, capture_output=True,
                          text=True, cwd=REPO)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"wall_s": None, "rc": done.returncode, "error": done.stderr[-800:]}


def index_bytes_per_record(path: Path, env: dict[str, str]) -> dict:
    """Bytes a fresh process allocates to index the file (what every rank holds), per record (tracemalloc: the
    Python heap, the index's arrays included; the parse's transient objects freed by then)."""
    code = ("import gc,sys,json,tracemalloc;sys.path.insert(0,%r)\n"
            "from instruct_data.sources import load_records\n"
            "gc.collect();tracemalloc.start();r=load_records(sys.argv[1]);gc.collect()\n"
            "now,peak=tracemalloc.get_traced_memory();n=len(r)\n"
            "print(json.dumps({'index_bytes_per_record':round(now/n,1),'index_peak_bytes_per_record':round(peak/n,1),"
            "'index_array_bytes_per_record':round(sum(x.itemsize*len(x) for x in (r.offsets,r.sizes,r.words,"
            "r.n_images))/n,1)}))" % str(REPO))
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": done.stderr[-800:]}


def step_balance(out: Path) -> dict:
    """The first logged step's max/mean across ranks of LLM tokens and image tiles (several processes only)."""
    from train.run_logger import read_metrics

    rows = read_metrics(out)
    keys = ("token_imbalance", "tile_imbalance")
    return {k: round(rows[0][k], 4) for k in keys if rows and k in rows[0]}


def train_config(path: Path, base: Path, data: Path, images: Path, out: Path, *, packing: bool, cache: Path,
                 procs: int = 1) -> Path:
    import yaml

    cfg = {
        "recipe": "instruct",
        "model": {"init_from": str(base), "template": "vicuna_v1"},
        "data": {"data_path": [str(data)], "image_folder": str(images), "max_length": 2048,
                 "group_by": "modality_length", "num_workers": 0, "packing": packing,
                 **({"length_cache_dir": str(cache)} if packing else {})},
        "optim": {"lr": 1e-4, "warmup_ratio": 0.0},
        "schedule": {"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 1, "seed": 0},
        # several processes: DDP (the default strategy, single, would make each process a whole run of its own)
        "engine": {"precision": "fp32", **({"strategy": "ddp"} if procs > 1 else {})},
        "checkpoint": {"output_dir": str(out), "resume": "none", "save_every": 100000},
        "feature_cache": {"enabled": False},
        "log": {"tensorboard": False, "progress_bar": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=66_500)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--vocab", type=int, default=8000, help="BPE vocabulary size of the generated tokenizer")
    parser.add_argument("--workers", type=int, default=None, help="N of the 1-vs-N runs (default: every core)")
    parser.add_argument("--only", default="index,validate,audit,train,balance",
                        help="comma-separated parts: index, validate, audit, train, balance (ranks' load per step, "
                             "rows shared by count vs by cost, pad and anyres data: bench/rank_balance.py)")
    parser.add_argument("--procs", default="1,2", help="process counts of the training runs")
    parser.add_argument("--dir", type=Path, help="work folder (kept; default a temp folder, removed)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measured command")
    args = parser.parse_args()
    from instruct_data.parallel import default_workers

    workers = args.workers or max(default_workers(), 2)
    parts = set(args.only.split(","))
    work = args.dir or Path(tempfile.mkdtemp(prefix="data_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}

    def emit(**row: object) -> None:
        print(json.dumps({"records": args.records, **row}), flush=True)

    try:
        t0 = time.perf_counter()
        rng = random.Random(0)
        words = make_words(rng)
        data = work / f"mix{args.records}.json"
        if not data.exists():
            write_records(data, args.records, args.images, words)
        images = work / "images"
        if not images.exists():
            write_images(images, args.images)
        base = work / "model" / "base"
        if not base.exists():
            build_model(work / "model", words, args.vocab)
        emit(what="generate", wall_s=round(time.perf_counter() - t0, 2), file_mb=round(data.stat().st_size / 2**20, 1))
        vlm = [sys.executable, "-m", "app.cli"]
        if "index" in parts:
            emit(what="index", **index_bytes_per_record(data, env))
        if "validate" in parts:
            for w in (1, workers):
                r = measured(vlm + ["data", "validate", str(data), "--image-folder", str(images), "--model", str(base),
                                    "--max-length", "2048", "--no-decode", "--workers", str(w)], env, args.timeout)
                emit(what="validate", workers=w, **r)
        if "audit" in parts:
            cfg = train_config(work / "audit.yaml", base, data, images, work / "audit_out", packing=False,
                               cache=work / "cache")
            for w in (1, workers):
                r = measured(vlm + ["data", "audit", str(cfg), "--workers", str(w)], env, args.timeout)
                emit(what="audit", workers=w, **r)
        if "train" in parts:
            for procs in (int(p) for p in args.procs.split(",")):
                cache = work / f"lengths_{procs}"
                shutil.rmtree(cache, ignore_errors=True)
                launcher = vlm if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={procs}", "-m", "app.cli"]
                for kind, packing in (("unpacked", False), ("packed_cold", True), ("packed_warm", True)):
                    out = work / f"run_{procs}_{kind}"
                    shutil.rmtree(out, ignore_errors=True)
                    cfg = train_config(work / f"{kind}_{procs}.yaml", base, data, images, out, packing=packing,
                                       cache=cache, procs=procs)
                    r = measured(launcher + ["train", str(cfg)], env, args.timeout)
                    emit(what="time_to_first_step", run=kind, procs=procs, **r, **step_balance(out))
        if "balance" in parts:
            from bench.rank_balance import run as rank_balance

            # plans only (every rank's, computed here as each rank computes it): 8 ranks as on one node too
            for ranks in sorted({int(p) for p in args.procs.split(",") if int(p) > 1} | {8}):
                rank_balance(data, images, base, work / "lengths_balance", world=ranks, emit=emit)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
