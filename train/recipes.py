"""The two recipes, `align` (phase 1) and `instruct` (phase 2): model, freezing, data and final save for the loop."""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from train.config import ConfigError, TrainConfig
from train.freezing import set_trainable, trainable_summary, vision_is_frozen
from train.loop import RunResult, Trainer, TrainData, seed_everything
from train.strategy import Strategy, build_strategy


@dataclass(frozen=True)
class Recipe:
    """What distinguishes a phase: its default template and whether its LLM can train."""

    name: str
    default_template: str | None  # None: the model checkpoint's own template
    llm_trains: bool


RECIPES: dict[str, Recipe] = {
    "align": Recipe("align", default_template="plain", llm_trains=False),
    "instruct": Recipe("instruct", default_template=None, llm_trains=True),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]


# ---------------------------------------------------------------------------- model
def build_model(cfg: TrainConfig) -> nn.Module:
    """Load `model.init_from` or build from vision/projector/llm; set the training template."""
    from vlm.model import VisionLanguageModel

    recipe = get_recipe(cfg.recipe)
    m = cfg.model
    if m.init_from:
        model = VisionLanguageModel.load(m.init_from)
        inherited = model.config.template
        model.config.template = m.template or recipe.default_template or inherited
        if cfg.recipe == "instruct" and model.config.template == "plain" and not m.template:
            raise ConfigError(f"recipe=instruct from {m.init_from} would inherit its template 'plain' (phase 1's); "
                              "set model.template (e.g. vicuna_v1)")
    else:
        assert m.vision is not None and m.llm is not None  # validate() checked
        template = m.template or recipe.default_template
        if template is None:
            raise ConfigError("model.template is required when building a new model for recipe=instruct")
        vision = dataclasses.replace(m.vision, spec=_absolute_spec(m.vision.spec))
        model = VisionLanguageModel.build(vision, m.projector, _absolute(m.llm), template,
                                          attn_implementation=m.attn_implementation,
                                          trust_remote_code=m.trust_remote_code)
    return model


def _absolute(ref: str) -> str:
    """A local path made absolute (a projector-only output refers to its frozen parts from any cwd); hub ids kept."""
    return str(Path(ref).resolve()) if Path(ref).exists() else ref


def _absolute_spec(spec: str) -> str:
    from vision_encoders.registry import parse_spec

    backend, name, checkpoint = parse_spec(spec)
    return f"{backend}:{_absolute(name)}" + (f"@{_absolute(checkpoint)}" if checkpoint else "")


def prepare_model(model: nn.Module, cfg: TrainConfig) -> dict[str, int]:
    """Freezing, LoRA and gradient checkpointing for the recipe; returns trainable counts per part."""
    recipe = get_recipe(cfg.recipe)
    llm_mode = cfg.llm_mode if recipe.llm_trains else "frozen"
    if not recipe.llm_trains and cfg.llm_mode not in ("frozen", "full"):
        raise ConfigError(f"recipe=align keeps the LLM frozen; llm_mode={cfg.llm_mode!r} needs recipe=instruct")
    set_trainable(model, recipe=cfg.recipe, llm_mode=llm_mode, unfreeze_vision_last_n=cfg.unfreeze_vision_last_n)
    if cfg.unfreeze_vision_last_n:
        model.config.vision.unfreeze_last_n = cfg.unfreeze_vision_last_n
    if llm_mode in ("lora", "qlora"):
        from train.lora import apply_lora

        apply_lora(model, cfg.lora, qlora=llm_mode == "qlora")
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model.llm)
    return trainable_summary(model)


def enable_gradient_checkpointing(llm: nn.Module) -> None:
    """Recompute LLM activations in backward (non-reentrant: works with frozen inputs and LoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.x name
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    llm.config.use_cache = False


# ---------------------------------------------------------------------------- data
def build_data(cfg: TrainConfig, model: nn.Module, strategy: Strategy, load_pixels: bool = True) -> TrainData:
    """InstructDataset over the configured records, this rank's deterministic micro-batches per epoch.

    `load_pixels=False` (feature cache on): items carry resolved image paths only; the feature hook reads
    cached features and decodes just the images it has not cached yet."""
    from instruct_data.collate import Collator
    from instruct_data.dataset import InstructDataset
    from instruct_data.sources import load_records
    from instruct_data.samplers import LengthGroupedSampler, ModalityLengthGroupedSampler

    d = cfg.data
    roots = [d.image_folder] if d.image_folder else []
    if d.mixture:
        try:
            from instruct_data.mixture import load_mixture  # type: ignore[import-not-found]
        except ImportError as err:
            raise ConfigError(f"data.mixture needs instruct_data.mixture, which is not available: {err}") from None
        records = load_mixture(d.mixture, image_roots=roots, seed=cfg.seed)
    else:
        records = load_records(d.data_path, image_roots=roots)
    dataset = InstructDataset(records, model.config.template, model.tokenizer,
                              image_token_id=model.config.image_token_id,
                              num_image_tokens=model.config.num_image_tokens,
                              image_processor=model.image_processor, image_roots=roots,
                              max_length=d.max_length, strict=d.strict, load_pixels=load_pixels)
    if d.packing:  # exact lengths for every record before any grouping (tokenized once, no image loaded)
        dataset.tokenize_all()
    # Lengths are read once, before any item is tokenized, so every process (and every resume) groups alike.
    if d.group_by == "modality_length":
        sampler_cls, lengths = ModalityLengthGroupedSampler, dataset.modality_lengths()
    elif d.group_by == "length":
        sampler_cls, lengths = LengthGroupedSampler, dataset.lengths()
    else:  # equal lengths: the grouped sampler degenerates to a seeded, rank-sharded shuffle
        sampler_cls, lengths = LengthGroupedSampler, [1] * len(dataset)
    # The sampler groups whole optimizer steps (this rank's share of one global batch), so the samples of a
    # step do not depend on micro_batch_size or on the number of processes; we cut each share into micro-batches.
    per_rank_step = cfg.global_batch_size // strategy.world_size
    sampler = sampler_cls(lengths, per_rank_step, world_size=strategy.world_size, rank=strategy.rank, seed=cfg.seed)
    size = cfg.micro_batch_size
    if d.packing:
        return _packed_data(cfg, model, dataset, sampler, per_rank_step)
    cache: dict[int, list[list[int]]] = {}

    def epoch_batches(epoch: int) -> list[list[int]]:
        if epoch not in cache:
            sampler.set_epoch(epoch)
            indices = sampler.rank_indices()
            indices = indices[: len(indices) - len(indices) % per_rank_step]  # whole steps only
            cache.clear()
            cache[epoch] = [indices[i:i + size] for i in range(0, len(indices), size)]
        return cache[epoch]

    return TrainData(dataset=dataset, collate=Collator(model.config.pad_token_id), epoch_batches=epoch_batches,
                     num_workers=d.num_workers)


def _packed_data(cfg: TrainConfig, model: nn.Module, dataset: Any, sampler: Any, per_rank_step: int) -> TrainData:
    """Each step's samples packed into rows (`instruct_data.packing`); micro-batches of `micro_batch_size` rows."""
    from instruct_data.collate import Collator
    from instruct_data.packed_collate import PackedCollator, PackedRows
    from instruct_data.packing import PackedBatchSampler

    lengths = dataset.lengths()  # exact: tokenize_all ran
    packer = PackedBatchSampler(sampler, lengths, step_size=per_rank_step, pack_length=cfg.data.resolved_pack_length(),
                                rows_per_micro_batch=cfg.micro_batch_size,
                                micro_batches_per_step=per_rank_step // cfg.micro_batch_size)
    packed, plain = PackedCollator(model.config.pad_token_id), Collator(model.config.pad_token_id)

    def check_pair(rows: list[tuple[int, ...]]) -> tuple[dict[str, Any], dict[str, Any]]:
        items = [[dataset[i] for i in row] for row in rows]
        return packed(items), plain([it for row in items for it in row])

    return TrainData(dataset=PackedRows(dataset), collate=packed, epoch_batches=packer.epoch_batches,
                     num_workers=cfg.data.num_workers, packer=packer, check_pair=check_pair, lengths=lengths)


# ---------------------------------------------------------------------------- feature cache hook
def feature_hook(cfg: TrainConfig, model: nn.Module) -> Callable[[dict[str, Any]], torch.Tensor | None] | None:
    """batch -> cached vision features, when the feature cache is on (align with a frozen encoder)."""
    wanted = cfg.feature_cache
    if wanted is None:  # auto
        wanted = cfg.recipe == "align" and vision_is_frozen(model)
    if not wanted:
        return None
    if not vision_is_frozen(model):
        raise ConfigError("feature_cache=true needs a frozen vision encoder (unfreeze_vision_last_n=0)")
    try:
        from train.feature_cache import FeatureCache, encoder_fingerprint
    except ImportError as err:
        if cfg.feature_cache is None:
            return None  # auto and not available: encode images as usual
        raise ConfigError(f"feature_cache=true but train.feature_cache cannot be imported: {err}") from None
    directory = cfg.feature_cache_dir or os.path.join(cfg.output_dir, "feature_cache")
    cache = FeatureCache(directory, encoder_fingerprint(model.vision_encoder, model.image_processor))

    def features(batch: dict[str, Any]) -> torch.Tensor | None:
        keys = batch.get("image_keys") or []
        if not keys:
            return None
        pixels = batch.get("pixel_values")

        def pixel_values_fn(missing: list[str]) -> torch.Tensor:
            from conversation.images import load_image

            if pixels is not None:
                index = {k: i for i, k in enumerate(keys)}
                return pixels[[index[k] for k in missing]]
            # The dataset only resolved the paths (load_pixels=False), so a broken file surfaces here, as an
            # ImageLoadError naming the key: the trainer drops that batch's records using it (or stops if strict).
            return torch.stack([model.image_processor(load_image(k)) for k in missing])

        def encode(missing: list[str]) -> torch.Tensor:
            with torch.no_grad():
                param = next(model.vision_encoder.parameters())
                return model.vision_encoder(pixel_values_fn(missing).to(param.device, param.dtype))

        if hasattr(cache, "get_or_compute"):
            return cache.get_or_compute(keys, encode)
        cached = cache.get(keys)  # all-or-nothing per batch
        if cached is None:
            cached = encode(list(keys))
            cache.put(keys, cached)
            cache.flush()
        return cached

    features.flush = cache.flush  # type: ignore[attr-defined]  # rows buffered by get_or_compute reach disk
    return features


# ---------------------------------------------------------------------------- final output
def save_final_model(cfg: TrainConfig, model: nn.Module, strategy: Strategy) -> Path:
    """Make `output_dir` itself a loadable model (projector-only when only the projector changed)."""
    from train.lora import is_lora

    out = Path(cfg.output_dir)
    unwrapped = strategy.unwrap(model)
    with strategy.full_parameters(model):
        lora = is_lora(unwrapped)
        llm_trained = any(p.requires_grad for n, p in unwrapped.named_parameters() if n.startswith("llm."))
        projector_only = lora or not (llm_trained or cfg.unfreeze_vision_last_n > 0)
        if strategy.is_main:
            _save_into(out, unwrapped, lora, projector_only)
    strategy.barrier()
    return out


def _save_into(out: Path, model: nn.Module, lora: bool, projector_only: bool) -> None:
    from train.lora import save_adapter

    staging = out / ".final_model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if lora:  # base reference + projector + added rows, then the adapters beside them
        wrapped, model.llm = model.llm, model.llm.get_base_model()
        try:
            model.save(staging, projector_only=True)
        finally:
            model.llm = wrapped
        save_adapter(model, staging)
    else:
        model.save(staging, projector_only=projector_only)
    for entry in staging.iterdir():  # move into place: output_dir also holds checkpoints and logs
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


# ---------------------------------------------------------------------------- entry point
def run(cfg: TrainConfig, strategy: Strategy | None = None) -> RunResult:
    """Everything `vlm train CONFIG` does."""
    cfg.validate()
    strategy = strategy or build_strategy(cfg.strategy, cfg)
    seed_everything(cfg.seed)
    model = build_model(cfg)
    if cfg.data.packing:  # sdpa -> SDPA per packed sample (vlm.packing); before LoRA wraps the LLM
        from vlm.packing import use_varlen_attention

        use_varlen_attention(model.llm)
    counts = prepare_model(model, cfg)
    hook = feature_hook(cfg, model)
    # With the cache on, items carry image paths only: a warm cache never decodes an image.
    data = build_data(cfg, model, strategy, load_pixels=hook is None)
    trainer = Trainer(cfg, model, data, strategy, features_fn=hook)
    if strategy.is_main:
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()) if k not in ("all", "total"))
        print(f"trainable parameters: {counts.get('total', 0):,} of {counts['all']:,} ({parts}); "
              f"feature cache {'on' if hook else 'off'}", flush=True)
    result = trainer.fit()
    if hook is not None and hasattr(hook, "flush"):
        hook.flush()
    save_final_model(cfg, trainer.model, strategy)
    strategy.close()
    return result
