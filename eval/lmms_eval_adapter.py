"""lmms-eval model adapter: `lmms-eval` runs its tasks on our checkpoints (or HF Llava dirs) through our generator.

Use (the optional `lmms` extra: `pip install --no-deps -r requirements-lmms.txt`, tested with lmms-eval 0.7.3;
tests/eval/test_lmms_eval.py runs its evaluator on a local task, eval/lmms_tasks/pope_world.yaml):
    from eval.lmms_eval_adapter import VLMTrainerLMM, register
    register()   # adds "vlm_trainer" to lmms-eval's model registry for its CLI / simple_evaluate(model="vlm_trainer")
    # or: lmms_eval.evaluator.simple_evaluate(model=VLMTrainerLMM(pretrained=CKPT), tasks=["pope"], ...)
"""
from __future__ import annotations

from itertools import groupby
from typing import Any

from PIL import Image

from eval.generation import load_generator
from eval.items import EvalItem

try:
    from lmms_eval.api.model import lmms
except ImportError as err:  # named, not swallowed: the adapter is useless without lmms-eval
    raise ImportError(f"eval.lmms_eval_adapter needs lmms-eval (`pip install lmms-eval`): {err}") from err

MODEL_ID = "vlm_trainer"


def _cut_until(text: str, until: list[str]) -> str:
    """Text before the first stop string lmms-eval asked for."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text.strip()


class VLMTrainerLMM(lmms):
    """lmms-eval's `lmms` interface over `eval.generation.ModelGenerator` (batched, left padded, greedy)."""

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 8,
                 max_new_tokens: int | str = 64, hf_template: str = "vicuna_v1", **_: Any) -> None:
        super().__init__()
        self.generator = load_generator(pretrained, int(max_new_tokens), device=device, hf_template=hf_template)
        self.batch_size_per_gpu = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)
        self.image_token = self.generator.model.config.image_token

    def _item(self, request: Any) -> tuple[EvalItem, dict[str, Any]]:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        images = [v for v in (visuals or []) if isinstance(v, Image.Image)]
        if len(images) > 1:
            raise ValueError(f"{task}/{doc_id}: {len(images)} images; this adapter handles one image per question")
        # our generator places the image token itself (LLaVA-1.5 layout: image first, then the text)
        prompt = context.replace(self.image_token, "").strip()
        return EvalItem(f"{task}/{split}/{doc_id}", images[0] if images else None, prompt), dict(gen_kwargs or {})

    def generate_until(self, requests: list[Any]) -> list[str]:
        prepared = [self._item(r) for r in requests]
        answers: list[str | None] = [None] * len(prepared)

        def budget(i: int) -> int:
            return int(prepared[i][1].get("max_new_tokens", self.default_max_new_tokens))

        order = sorted(range(len(prepared)), key=budget)  # one generate call never mixes token budgets
        for max_new, group in groupby(order, key=budget):
            idx = list(group)
            self.generator.max_new_tokens = max_new
            for b in range(0, len(idx), self.batch_size_per_gpu):
                chunk = idx[b:b + self.batch_size_per_gpu]
                texts = self.generator([prepared[i][0] for i in chunk])
                for i, text in zip(chunk, texts, strict=True):
                    until = prepared[i][1].get("until") or []
                    answers[i] = _cut_until(text, [until] if isinstance(until, str) else list(until))
        self.generator.max_new_tokens = self.default_max_new_tokens
        return [a if a is not None else "" for a in answers]

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError("vlm_trainer: loglikelihood tasks are not supported (generation tasks only)")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("vlm_trainer: multi-round generation is not supported")


def register() -> None:
    """Add `vlm_trainer` to lmms-eval's model registry (its CLI then accepts `--model vlm_trainer`)."""
    from lmms_eval.api.registry import register_model

    register_model(MODEL_ID)(VLMTrainerLMM)
    try:
        from lmms_eval.models import MODEL_REGISTRY_V2
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError:
        return  # older lmms-eval: the decorator registry above is the one it reads
    MODEL_REGISTRY_V2.register_manifest(
        ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VLMTrainerLMM"), overwrite=True)
