"""Our preference (DPO) step vs TRL's `DPOTrainer` on the same exported HF Llava weights and the same pairs: the
policy log-probabilities of chosen and rejected replies, the loss before and after one identical SGD update, then
tokens/s and peak memory of a training step (forward + backward + AdamW step); one JSON line per comparison.

The model is `bench/vs_hf.py`'s (random-init CLIP + Qwen2-shaped LLM with Qwen2's 151,936-row vocabulary), exported
with `vlm.hf.convert.export_hf` (what `vlm export-hf` writes). The pairs are preference records (`{"id", "image",
"conversations": [... ending with a human turn], "chosen", "rejected"}`) over noise images of the encoder's size;
TRL reads them as its conversational columns (`prompt` / `chosen` / `rejected` / `images`) and renders them with the
exported processor's chat template, so both sides tokenize on their own; the bench checks they agree token by token.

What each side keeps in memory: ours reads the reference log-probabilities from its pre-pass cache, so no second
model exists while training. TRL 1.16 refuses `precompute_ref_log_probs` for vision datasets, so for a VLM it holds a
reference copy and runs it every step (`--trl-ref live`, the default: TRL as its users run it). `--trl-ref
precomputed` hands TRL the reference log-probs in the batch (its text-only path) and drops its reference model after
computing them: step against step, ours' caching left out (TRL's `peak_mb` then still counts the reference it loaded
at construction; compare `step_peak_mb`). The cost of ours' pre-pass (one no-grad forward per pair, once per run) is
printed beside the step times (`ours_prepass_s`, one batch's), and `ratio_tokens_per_s_one_epoch` charges it to every
step, as in a one-epoch run. On a CPU, TRL's fused LM head scores every position of the batch (its completion-only
selection is for CUDA / XPU, where it has Triton); `--trl-compact` makes it select as on a GPU (its kernels stay the
same torch ops), the fair CPU stand-in for a GPU run.

Peak memory: on a GPU, `torch.cuda.max_memory_allocated` of the whole run (weights, reference, gradients, optimizer
state, activations); on a CPU, each side in a fresh process, VmHWM above the resident memory after the imports
(`peak_mb`), and above the resident memory just before the steps (`step_peak_mb`). Run: `python bench/vs_trl.py
[--quick] [--device cuda] [--trl-ref live|precomputed] [--trl-compact] [--beta B] [--label-smoothing E]`
(`--only-trl`: TRL's side alone).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.vs_hf import SHAPES, WORDS, Shape, _status_kib, build_model, set_phase, synced, time_interleaved  # noqa: E402

SGD_LR = 2e-3  # the one SGD update of the equality check: the loss visibly leaves log 2
ADAMW_LR = 1e-5  # the timed steps' optimizer (the same torch AdamW on both sides)


# ------------------------------------------------------------------------------------------- model and pairs
def make_pairs(root: Path, count: int, image_size: int, reply_words: tuple[int, int], seed: int = 0
               ) -> list[dict[str, Any]]:
    """`count` preference records over noise images (written to root/pairs.json): a question, a chosen and a
    rejected reply of different lengths."""
    from conversation.testing import noise_image

    rng = random.Random(seed)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    records = []
    for i in range(count):
        noise_image((image_size, image_size), seed=i).save(root / f"img{i}.png")
        chosen, rejected = words(*reply_words), words(*reply_words)
        while rejected == chosen:
            rejected = words(*reply_words)
        records.append({"id": f"p{i}", "image": f"img{i}.png", "chosen": chosen, "rejected": rejected,
                        "conversations": [{"from": "human", "value": "<image>\nwhat is " + words(3, 6)}]})
    (root / "pairs.json").write_text(json.dumps(records))
    return records


def export(root: Path) -> Path:
    """Our checkpoint (root/ckpt) exported as HF Llava to root/hf, as `vlm export-hf` does."""
    from vlm.hf.convert import export_hf
    from vlm.model import VisionLanguageModel

    with warnings.catch_warnings():  # images are square at the encoder's size: HF's resize-to-square is a no-op
        warnings.filterwarnings("ignore", message="HF image processors cannot pad")
        return export_hf(VisionLanguageModel.load(root / "ckpt"), root / "hf")


def trl_examples(root: Path) -> list[dict[str, Any]]:
    """The pairs as TRL's conversational preference examples (the image placeholder becomes an image part)."""
    from PIL import Image

    out = []
    for record in json.loads((root / "pairs.json").read_text()):
        (turn,) = record["conversations"]
        text = turn["value"].removeprefix("<image>\n")
        out.append({"images": [Image.open(root / record["image"]).convert("RGB")],
                    "prompt": [{"role": "user", "content": text}],
                    "chosen": [{"role": "assistant", "content": record["chosen"]}],
                    "rejected": [{"role": "assistant", "content": record["rejected"]}]})
    return out


def trl_loss_types(label_smoothing: float) -> tuple[list[str], list[float] | None]:
    """TRL's `sigmoid` loss has no label smoothing; conservative DPO (-(1-e) logsig(bd) - e logsig(-bd)) is
    2(1-e) sigmoid - (1-2e) robust in TRL's weighted sum of losses."""
    if label_smoothing == 0:
        return ["sigmoid"], None
    return ["sigmoid", "robust"], [2 * (1 - label_smoothing), -(1 - 2 * label_smoothing)]


# ------------------------------------------------------------------------------------------- TRL's side
_TRL_SELECTS: dict[str, Any] = {}  # TRL's own position selector, kept while `--trl-compact` replaces it


class TrlSide:
    """TRL's `DPOTrainer` over the exported model, one fixed batch of all pairs (its own collator, in order)."""

    def __init__(self, root: Path, device: str, beta: float, label_smoothing: float, ref: str,
                 compact: bool = False) -> None:
        import trl.trainer.utils as trl_utils
        from datasets import Dataset
        from transformers import AutoProcessor, LlavaForConditionalGeneration
        from trl import DPOConfig, DPOTrainer

        # compact: score the completion positions only, as TRL's fused head does on CUDA / XPU. This replaces only its
        # choice of positions (its kernels pick torch ops or Triton on their own), for the whole process.
        original = _TRL_SELECTS.setdefault("compact", trl_utils._use_triton)
        trl_utils._use_triton = (lambda device: True) if compact else original
        examples = trl_examples(root)
        model = LlavaForConditionalGeneration.from_pretrained(root / "hf", dtype=torch.float32)
        set_phase(None, model, 2)  # projector + LLM train, the vision tower is frozen (as our prefer recipe)
        loss_type, loss_weights = trl_loss_types(label_smoothing)
        cuda = device.startswith("cuda")
        args = DPOConfig(output_dir=str(root / "trl_out"), use_cpu=not cuda, bf16=cuda, report_to=[],
                         per_device_train_batch_size=len(examples), gradient_checkpointing=False, max_length=None,
                         beta=beta, label_smoothing=label_smoothing, loss_type=loss_type, loss_weights=loss_weights,
                         precompute_ref_log_probs=False, remove_unused_columns=False, save_strategy="no", seed=0)
        self.trainer = DPOTrainer(model=model, args=args, processing_class=AutoProcessor.from_pretrained(root / "hf"),
                                  train_dataset=Dataset.from_list(examples))
        self.trainer.current_gradient_accumulation_steps = 1  # set by `train()`, read by `training_step`
        self.model = self.trainer.model
        self.batch = self.trainer.data_collator([dict(e) for e in examples])
        self.ref = ref
        if ref == "precomputed":  # TRL's own precompute path, fed by hand (it refuses it for vision datasets)
            with torch.no_grad():
                chosen, rejected = self.trainer.compute_ref_log_probs(self.trainer.ref_model, self._on_device())
            self.batch["ref_chosen_logps"], self.batch["ref_rejected_logps"] = chosen, rejected
            self.trainer.ref_model, self.trainer.precompute_ref_logps = None, True
            gc.collect()
        self.optimizer: torch.optim.Optimizer | None = None

    def _on_device(self) -> dict[str, Any]:
        return self.trainer._prepare_inputs(dict(self.batch))

    def rows(self) -> list[list[int]]:
        """Each row's real tokens (chosen rows, then rejected rows), padding removed."""
        ids, mask = self.batch["input_ids"], self.batch["attention_mask"]
        return [row[m.bool()].tolist() for row, m in zip(ids, mask)]

    def tokens(self) -> int:
        return int(self.batch["attention_mask"].sum())

    def policy_logps(self) -> torch.Tensor:
        """[chosen..., rejected...] summed reply log-probs of the policy, through TRL's own fused-head path."""
        chosen, rejected = self.trainer.compute_ref_log_probs(self.model, self._on_device())
        return torch.cat([chosen, rejected]).double().cpu()

    def loss(self) -> float:
        with torch.no_grad():
            return float(self.trainer.compute_loss(self.model, self._on_device()))

    def backward(self) -> float:
        self.model.zero_grad(set_to_none=True)
        return float(self.trainer.training_step(self.model, dict(self.batch)))

    def step(self) -> float:
        """A training step: forward (+ TRL's live reference forward), backward, AdamW."""
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=ADAMW_LR)
        loss = self.backward()
        self.optimizer.step()
        return loss


# ------------------------------------------------------------------------------------------- our side
class OursSide:
    """Our `prefer` recipe's step over our checkpoint and the same pairs: the recipe's dataset and collator, the
    reference pre-pass (`train.reference.compute_block`, timed), then `train.preference.preference_loss` divided by
    the pairs, as `train.step` scales it on one process."""

    def __init__(self, root: Path, device: str, beta: float, label_smoothing: float) -> None:
        from instruct_data.preference import PreferenceDataset, collate_pairs
        from instruct_data.sources import load_records
        from train.freezing import set_trainable
        from train.preference import PreferenceObjective
        from train.recipe_registry import get_recipe
        from train.strategies.loss_view import LossView
        from vlm.inputs import image_token_counter
        from vlm.model import VisionLanguageModel

        self.device = device
        self.model = model = VisionLanguageModel.load(root / "ckpt", device=device)
        set_trainable(model, recipe=get_recipe("prefer"), llm_mode="full")
        model.train()
        dataset = PreferenceDataset(load_records(root / "pairs.json", image_roots=[root]), model.config.template,
                                    model.tokenizer, image_token_id=model.config.image_token_id,
                                    num_image_tokens=image_token_counter(model),
                                    image_processor=model.image_processor, image_roots=[root])
        self.dataset, self.pairs = dataset, len(dataset)
        self.prepass()
        self.batch = collate_pairs([dataset[i] for i in range(self.pairs)], int(model.config.pad_token_id))
        self.objective = PreferenceObjective("dpo", beta, label_smoothing)
        self.view = LossView(model)  # what the single-process strategy hands the step: calling it gives the loss
        self.optimizer: torch.optim.Optimizer | None = None

    def prepass(self) -> float:
        """The reference pre-pass over all pairs (the recipe's `compute_block`, one micro-batch); its seconds."""
        from train.reference import compute_block

        start = time.perf_counter()
        self.dataset.reference = compute_block(self.model, self.dataset, list(range(self.pairs)), self.pairs, 1,
                                               int(self.model.config.pad_token_id), autocast=self._autocast)
        self._sync()
        return time.perf_counter() - start

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.startswith("cuda") else nullcontext()

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def rows(self) -> list[list[int]]:
        ids, mask = self.batch.input_ids, self.batch.attention_mask
        return [row[m.bool()].tolist() for row, m in zip(ids, mask)]

    def policy_logps(self) -> torch.Tensor:
        from train.reference import reply_logps

        with torch.no_grad(), self._autocast():
            return reply_logps(self.model, self.batch)

    def _loss(self) -> torch.Tensor:
        from train.preference import preference_loss

        with self._autocast():
            loss, _ = preference_loss(self.objective, self.view, self.batch, None)
        return loss / self.pairs

    def loss(self) -> float:
        with torch.no_grad():
            return float(self._loss())

    def backward(self) -> float:
        self.model.zero_grad(set_to_none=True)
        loss = self._loss()
        loss.backward()
        return float(loss.detach())

    def step(self) -> float:
        """A training step: forward (reference from the cache), backward, AdamW."""
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=ADAMW_LR)
        loss = self.backward()
        self.optimizer.step()
        return loss


def sgd_update(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param.add_(param.grad, alpha=-SGD_LR)


# ------------------------------------------------------------------------------------------- peak memory
def run_peak_mb(load: Any, device: str, steps: int = 2) -> dict[str, float]:
    """Peak memory of loading a side and running `steps` training steps (see the module docstring)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        side = load()
        before = torch.cuda.memory_allocated()
        for _ in range(steps):
            side.step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mb": peak / 2**20, "step_peak_mb": (peak - before) / 2**20}
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status_kib("VmRSS")
    side = load()
    gc.collect()
    load_peak, before = _status_kib("VmHWM"), _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(steps):
        side.step()
    step_hwm = _status_kib("VmHWM")
    return {"peak_mb": (max(load_peak, step_hwm) - base) / 1024, "step_peak_mb": (step_hwm - before) / 1024}


def child_memory(root: Path, side: str, args: argparse.Namespace) -> dict[str, float]:
    """One side's peaks in a fresh process (CPU: the allocator keeps freed memory, so sides must not share)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}  # big blocks go back to the OS when freed
    cmd = [sys.executable, __file__, "--child", side, "--workdir", str(root), "--device", args.device,
           "--beta", str(args.beta), "--label-smoothing", str(args.label_smoothing), "--trl-ref", args.trl_ref,
           *(["--trl-compact"] if args.trl_compact else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{side} memory run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_side(root: Path, side: str, args: argparse.Namespace) -> Any:
    if side == "trl":
        return TrlSide(root, args.device, args.beta, args.label_smoothing, args.trl_ref, args.trl_compact)
    return OursSide(root, args.device, args.beta, args.label_smoothing)


def run_child(args: argparse.Namespace) -> None:
    import transformers  # noqa: F401  (both sides' imports land in the baseline)
    import trl  # noqa: F401

    root = Path(args.workdir)
    print(json.dumps(run_peak_mb(lambda: load_side(root, args.child, args), args.device)))


# ------------------------------------------------------------------------------------------- the comparison
def equality(trl_side: TrlSide, ours: Any) -> dict[str, Any]:
    """Token rows, policy log-probs, loss before and after one SGD update of lr SGD_LR, on both sides."""
    def trainable(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    out: dict[str, Any] = {"tokens_equal": trl_side.rows() == ours.rows(),
                           "trainable_equal": trainable(trl_side.model) == trainable(ours.model)}
    trl_logps, ours_logps = trl_side.policy_logps(), ours.policy_logps()
    out["logps_max_rel_gap"] = float(((trl_logps - ours_logps).abs() / trl_logps.abs()).max())
    out["logps_max_abs_gap"] = float((trl_logps - ours_logps).abs().max())
    out["trl_loss"], out["ours_loss"] = trl_side.backward(), ours.backward()
    sgd_update(trl_side.model)
    sgd_update(ours.model)
    out["trl_loss_after_sgd"], out["ours_loss_after_sgd"] = trl_side.loss(), ours.loss()
    out["loss_abs_gap"] = abs(out["trl_loss"] - out["ours_loss"])
    out["loss_after_sgd_abs_gap"] = abs(out["trl_loss_after_sgd"] - out["ours_loss_after_sgd"])
    return out


def bench(root: Path, args: argparse.Namespace, shape: Shape) -> dict[str, Any]:
    started = time.perf_counter()
    trl_side = load_side(root, "trl", args)
    line: dict[str, Any] = {"trl_ref": args.trl_ref, "trl_compact": args.trl_compact, "beta": args.beta, "label_smoothing": args.label_smoothing,
                            "pairs": shape.batch, "tokens": trl_side.tokens(), "vocab": trl_side.model.config.text_config.vocab_size,
                            "device": args.device, "dtype": "bf16 autocast" if args.device.startswith("cuda") else "fp32",
                            "threads": torch.get_num_threads()}
    if args.only_trl:
        trl_side.backward()  # warm-up
        start = time.perf_counter()
        for _ in range(shape.steps):
            synced(trl_side.step, args.device)()
        seconds = (time.perf_counter() - start) / shape.steps
        line.update(trl_tokens_per_s=line["tokens"] / seconds, trl_logps=trl_side.policy_logps().tolist(),
                    trl_loss=trl_side.backward(), **{f"trl_{k}": v for k, v in child_memory(root, "trl", args).items()})
    else:
        ours = load_side(root, "ours", args)
        line.update(equality(trl_side, ours))
        ours_s, trl_s = time_interleaved(synced(ours.step, args.device), synced(trl_side.step, args.device),
                                         shape.steps)
        prepass_s = ours.prepass()  # warm: one no-grad forward of the batch's pairs, paid once per run
        ours_mem, trl_mem = child_memory(root, "ours", args), child_memory(root, "trl", args)
        line.update(ratio_tokens_per_s=trl_s / ours_s, ratio_peak_memory=ours_mem["peak_mb"] / trl_mem["peak_mb"],
                    ours_tokens_per_s=line["tokens"] / ours_s, trl_tokens_per_s=line["tokens"] / trl_s,
                    ours_prepass_s=prepass_s, ratio_tokens_per_s_one_epoch=trl_s / (ours_s + prepass_s),
                    **{f"ours_{k}": v for k, v in ours_mem.items()}, **{f"trl_{k}": v for k, v in trl_mem.items()})
    line["wall_s"] = time.perf_counter() - started
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny widths, 1 timed step")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side (default: by shape)")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta (prefer.beta)")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="conservative DPO's label smoothing (prefer.label_smoothing)")
    parser.add_argument("--trl-ref", choices=["live", "precomputed"], default="live",
                        help="TRL's reference: a live model (what TRL runs for VLMs) or log-probs handed in the batch")
    parser.add_argument("--trl-compact", action="store_true",
                        help="CPU: TRL's head scores completion positions only, as on CUDA (else every position)")
    parser.add_argument("--only-trl", action="store_true", help="bench TRL's side alone (no comparison)")
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args)
        return
    shape = SHAPES["quick" if args.quick else "default"]
    if args.steps:
        shape = Shape(**{**shape.__dict__, "steps": args.steps})
    with tempfile.TemporaryDirectory(prefix="vs_trl_") as tmp:
        root = Path(tmp)
        build_model(root, shape)
        export(root)
        make_pairs(root, shape.batch, shape.image_size, shape.words)
        print(json.dumps(bench(root, args, shape)), flush=True)


if __name__ == "__main__":
    main()
