"""Running a recipe (its row in `train.recipe_registry`): model, freezing, data and final save for the loop."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from train import lockstep, rules
from train.config import TrainConfig
from train.feature_prefill import prefill
from train.feature_source import FeatureSource, feature_source
from train.freezing import set_trainable, trainable_summary
from train.loop import RunResult, TrainData, Trainer
from train.preflight import load_train_records, run_preflight, training_template
from train.recipe_registry import get_recipe
from train.runtime import resolve_precision, seed_everything
from train.strategies.base import Strategy
from train.strategies.registry import build_strategy
from vlm.atomic import replace_directory
from vlm.batch import Batch


# ---------------------------------------------------------------------------- model
def build_model(cfg: TrainConfig, strategy: Strategy | None = None) -> nn.Module:
    """Load `model.init_from` or build from vision/projector/llm; set the training template. With a strategy: in
    the dtype of `train.load_policy` and inside the strategy's model-init context (ZeRO-3: partitioned)."""
    from train.load_policy import FP32, load_dtype

    dtype = None
    if strategy is not None:
        dtype = load_dtype(cfg, resolve_precision(cfg.engine.precision, strategy.device), strategy.keeps_master_weights)
        dtype = None if dtype == FP32 else dtype
    with strategy.model_init_context() if strategy is not None else contextlib.nullcontext():
        model = _load_model(cfg, dtype)
    return model


def _load_model(cfg: TrainConfig, dtype: str | None) -> nn.Module:
    from vlm.model import VisionLanguageModel

    recipe = get_recipe(cfg.recipe)
    m = cfg.model
    llm_kwargs = None
    if cfg.trainable.llm_mode == "qlora" and "llm" in recipe.trains:
        from train.lora import qlora_llm_kwargs

        llm_kwargs = qlora_llm_kwargs(m.init_from)  # the LLM goes straight from disk into 4-bit: no fp32 copy
    if m.init_from:
        from vlm.config import VLMConfig

        # The config's attention implementation, remote-code policy and dtype take effect over the checkpoint's;
        # the load policy's dtype (bf16 where nothing trainable loses fp32 masters) is not the saved model's.
        policy_only = dtype is not None and not m.torch_dtype
        saved_dtype = VLMConfig.load(Path(m.init_from)).torch_dtype if policy_only else None
        model = VisionLanguageModel.load(m.init_from, torch_dtype=m.torch_dtype or dtype,
                                         attn_implementation=m.attn_implementation,
                                         trust_remote_code=m.trust_remote_code, llm_kwargs=llm_kwargs)
        if policy_only:
            model.config.torch_dtype = saved_dtype
        model.config.template = training_template(cfg, model.config.template)
    else:
        assert m.vision is not None and m.llm is not None  # train.rules checked
        template = m.template or recipe.default_template
        assert template is not None  # train.rules checked
        vision = dataclasses.replace(m.vision, spec=_absolute_spec(m.vision.spec))
        model = VisionLanguageModel.build(vision, m.projector, _absolute(m.llm), template,
                                          attn_implementation=m.attn_implementation or "sdpa",
                                          trust_remote_code=bool(m.trust_remote_code),
                                          torch_dtype=m.torch_dtype or dtype, llm_kwargs=llm_kwargs)
        if not m.torch_dtype:
            model.config.torch_dtype = None  # as before: a loaded output is fp32 unless asked otherwise
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
    llm_mode = recipe.llm_mode(cfg.trainable.llm_mode)
    set_trainable(model, recipe=recipe, llm_mode=llm_mode, unfreeze_vision_last_n=cfg.trainable.unfreeze_vision_last_n)
    if cfg.trainable.unfreeze_vision_last_n:
        model.config.vision.unfreeze_last_n = cfg.trainable.unfreeze_vision_last_n
    if llm_mode in ("lora", "qlora"):
        from train.lora import apply_lora

        apply_lora(model, cfg.trainable.lora, qlora=llm_mode == "qlora")
    if cfg.trainable.gradient_checkpointing:
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
def build_data(cfg: TrainConfig, model: nn.Module, strategy: Strategy, load_pixels: bool = True,
               records: Any = None) -> TrainData:
    """InstructDataset over the configured records, this rank's deterministic micro-batches per epoch.

    `load_pixels=False` (feature cache on): items carry resolved image paths only; the feature hook reads
    cached features and decodes just the images it has not cached yet."""
    from instruct_data.collate import Collator
    from instruct_data.dataset import InstructDataset
    from instruct_data.preference import PreferenceCollator, PreferenceDataset
    from instruct_data.samplers import LengthGroupedSampler, ModalityLengthGroupedSampler
    from vlm.inputs import image_token_counter

    d = cfg.data
    roots = [d.image_folder] if d.image_folder else []
    records = records if records is not None else load_train_records(cfg)
    prefer = cfg.recipe == "prefer"  # preference records: a pair per item, its two sequences per batch
    dataset_cls = PreferenceDataset if prefer else InstructDataset
    dataset = dataset_cls(records, model.config.template, model.tokenizer,
                              image_token_id=model.config.image_token_id,
                              num_image_tokens=image_token_counter(model),
                              image_processor=model.image_processor, image_roots=roots,
                              max_length=d.max_length, strict=d.guards.strict, load_pixels=load_pixels)
    # Lengths are read once, before any item is tokenized, so every process (and every resume) groups alike.
    if d.group_by == "modality_length":
        sampler_cls, lengths = ModalityLengthGroupedSampler, dataset.modality_lengths()
    elif d.group_by == "length":
        sampler_cls, lengths = LengthGroupedSampler, dataset.lengths()
    else:  # equal lengths: the grouped sampler degenerates to a seeded, rank-sharded shuffle
        sampler_cls, lengths = LengthGroupedSampler, [1] * len(dataset)
    # The sampler groups whole optimizer steps (this rank's share of one global batch), so the samples of a
    # step do not depend on micro_batch_size or on the number of processes; we cut each share into micro-batches.
    per_rank_step = cfg.schedule.global_batch_size // strategy.world_size
    sampler = sampler_cls(lengths, per_rank_step, world_size=strategy.world_size, rank=strategy.rank,
                          seed=cfg.schedule.seed)
    size = cfg.schedule.micro_batch_size
    if d.packing:
        return _packed_data(cfg, model, dataset, sampler, per_rank_step, strategy)
    cache: dict[int, list[list[int]]] = {}

    def epoch_batches(epoch: int) -> list[list[int]]:
        if epoch not in cache:
            sampler.set_epoch(epoch)
            indices = sampler.rank_indices()
            indices = indices[: len(indices) - len(indices) % per_rank_step]  # whole steps only
            cache.clear()
            cache[epoch] = [indices[i:i + size] for i in range(0, len(indices), size)]
        return cache[epoch]

    collate = (PreferenceCollator if prefer else Collator)(model.config.pad_token_id)
    return TrainData(dataset=dataset, collate=collate, epoch_batches=epoch_batches,
                     num_workers=d.num_workers)


def _packed_data(cfg: TrainConfig, model: nn.Module, dataset: Any, sampler: Any, per_rank_step: int,
                 strategy: Strategy | None = None) -> TrainData:
    """Each step's samples packed into rows (`instruct_data.packing`); micro-batches of `micro_batch_size` rows."""
    from instruct_data.collate import Collator
    from instruct_data.packed_collate import PackedCollator, PackedRows
    from instruct_data.packing import PackedBatchSampler

    # The sampler grouped by the lengths an unpacked run groups by (read before this), so a packed run trains the
    # very steps of the unpacked one; packing itself needs exact lengths: every record tokenized once, no image,
    # split over the ranks and worker processes, and cached for later runs and resumes.
    from instruct_data.length_cache import exact_lengths

    cache_dir = cfg.data.length_cache_dir or Path(cfg.checkpoint.output_dir) / "lengths"
    exact_lengths(dataset, cache_dir, strategy=strategy)
    lengths = dataset.lengths()
    packer = PackedBatchSampler(sampler, lengths, step_size=per_rank_step, pack_length=cfg.data.resolved_pack_length(),
                                rows_per_micro_batch=cfg.schedule.micro_batch_size,
                                micro_batches_per_step=per_rank_step // cfg.schedule.micro_batch_size)
    packed, plain = PackedCollator(model.config.pad_token_id), Collator(model.config.pad_token_id)

    def check_pair(rows: list[tuple[int, ...]]) -> tuple[Batch, Batch]:
        items = [[dataset[i] for i in row] for row in rows]
        return packed(items), plain([it for row in items for it in row])

    return TrainData(dataset=PackedRows(dataset), collate=packed, epoch_batches=packer.epoch_batches,
                     num_workers=cfg.data.num_workers, packer=packer, check_pair=check_pair)


# ---------------------------------------------------------------------------- final output
def save_final_model(cfg: TrainConfig, model: nn.Module, strategy: Strategy) -> Path:
    """Make `output_dir` itself a loadable model (projector-only when only the projector changed)."""
    from train.lora import is_lora

    out = Path(cfg.checkpoint.output_dir)
    unwrapped = strategy.unwrap(model)
    lora = is_lora(unwrapped)
    llm_trained = any(p.requires_grad for n, p in unwrapped.named_parameters() if n.startswith("llm."))
    projector_only = lora or not (llm_trained or cfg.trainable.unfreeze_vision_last_n > 0)
    only, llm_state = None, None
    if projector_only:
        if not lora:  # peft's adapter save reads more of the model than the adapters: it gets the model whole
            only = _read_by_save(unwrapped)
    elif strategy.partitions_parameters:
        # ZeRO-3: the LLM is gathered module by module onto rank 0's host memory, never whole on every rank at once;
        # the vision tower and the projector (small beside it) are gathered whole.
        full = strategy.state_dict_for_save(model)
        llm_state = {name.removeprefix("llm."): value for name, value in full.items() if name.startswith("llm.")}
        only = [p for name, p in unwrapped.named_parameters() if not name.startswith("llm.")]
    with strategy.full_parameters(model, only=only):
        if strategy.is_main:
            _save_into(out, unwrapped, lora, projector_only, llm_state)
    strategy.barrier()
    return out


def _read_by_save(model: nn.Module) -> list[nn.Parameter]:
    """What a projector-only save reads (under ZeRO-3 only these are gathered, not the frozen model): the trainable
    parameters (the projector) and the embedding matrices holding the added tokens' rows."""
    embeddings = [model.llm.get_input_embeddings().weight]
    output = model.llm.get_output_embeddings()
    if output is not None and output.weight is not embeddings[0]:
        embeddings.append(output.weight)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return trainable + [p for p in embeddings if all(p is not q for q in trainable)]


def _save_into(out: Path, model: nn.Module, lora: bool, projector_only: bool,
               llm_state: dict[str, Any] | None = None) -> None:
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
        model.save(staging, projector_only=projector_only, llm_state=llm_state)
    for entry in staging.iterdir():  # move into place: output_dir also holds checkpoints and logs
        if entry.is_dir():
            replace_directory(entry, out / entry.name)
        else:
            os.replace(entry, out / entry.name)
    staging.rmdir()


# ---------------------------------------------------------------------------- entry point
def run(cfg: TrainConfig, strategy: Strategy | None = None) -> RunResult:
    """Everything `vlm train CONFIG` does."""
    if lockstep.enabled():
        lockstep.count_collectives()  # before the strategy starts DeepSpeed, which keeps its own references
    strategy = strategy or build_strategy(cfg.engine.strategy, cfg)
    try:
        rules.check(cfg, strategy.world_size, strategy.device)  # every config rule, before any weight loads
        result = _train(cfg, strategy)
    except BaseException:
        strategy.abort()
        raise
    strategy.close()
    return result


def _train(cfg: TrainConfig, strategy: Strategy) -> RunResult:
    features: FeatureSource | None = None
    try:
        seed_everything(cfg.schedule.seed)
        records = load_train_records(cfg)
        early = bool(cfg.model.init_from)  # K, tokenizer and template are known before any weight loads
        if early:
            run_preflight(cfg, records, strategy)
        model = build_model(cfg, strategy)
        if not early:
            run_preflight(cfg, records, strategy, model=model)
        if cfg.data.packing:  # sdpa -> SDPA per packed sample (vlm.packing); before LoRA wraps the LLM
            from vlm.packing import use_varlen_attention

            use_varlen_attention(model.llm)
        counts = prepare_model(model, cfg)
        if not strategy.keeps_master_weights:
            from train.load_policy import upcast_trainable

            upcast_trainable(model)  # torch AdamW steps fp32 masters; the frozen rest may stay bf16
        features = feature_source(cfg, model, strategy)
        # With the cache on, items carry image paths only: a warm cache never decodes an image.
        data = build_data(cfg, model, strategy, load_pixels=features is None, records=records)
        if features is not None and strategy.partitions_parameters:
            # ZeRO-3 partitions even the frozen encoder: the cache is filled before the engine starts and no
            # rank runs the encoder during training (one rank alone would hang the others' collectives).
            prefill(cfg, model, data, strategy, features)
            strategy.use_cached_vision_features()
        trainer = Trainer(cfg, model, data, strategy, features=features)
        if cfg.recipe == "prefer":  # the initial weights' reply log-probabilities, before a checkpoint can load
            from train.reference import reference_logps

            reference_logps(cfg, strategy.unwrap(trainer.model), data.dataset, strategy, trainer.precision, features)
        if strategy.is_main:
            parts = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()) if k not in ("all", "total"))
            print(f"trainable parameters: {counts.get('total', 0):,} of {counts['all']:,} ({parts}); "
                  f"feature cache {'on' if features else 'off'}", flush=True)
        result = trainer.fit()
        save_final_model(cfg, trainer.model, strategy)
    finally:
        if features is not None:
            features.flush()  # what was encoded reaches disk, also when the run failed
    return result
