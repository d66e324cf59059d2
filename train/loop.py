"""The training loop: accumulation to a global batch, token-weighted loss, clipping, schedule, checkpoints, resume."""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from conversation.errors import ImageLoadError
from instruct_data.packed_collate import sample_image_owners, without_samples
from train.checkpointing import (TrainerState, load_checkpoint, read_trainer_state, resolve_resume,
                                 save_checkpoint)
from train.config import TrainConfig, save_config
from train.efficiency import EfficiencyLog
from train.errors import NonFiniteLossError
from train.feeding import Feeder, WaitWarner, enable_tf32, to_device
from train.guards import DataGuard
from train.optim import build_optimizer, build_scheduler, summarize
from train.run_logger import RunLogger, plot_loss_curve, truncate_metrics
from train.strategies.base import Strategy
from train.strategies.registry import build_strategy
from vlm.batch import Batch

CHECK_ATTEMPTS = 8  # packed micro-batches the self-check tries before giving up on comparing (logged)


@dataclass
class TrainData:
    """What the loop needs from the data layer (assembled by the recipe)."""

    dataset: Any  # map-style: __getitem__(i) -> item dict (see docs/architecture.md), or None when skipped
    collate: Callable[[list[Any]], Batch | None]
    epoch_batches: Callable[[int], list[list[int]]]  # this rank's micro-batches (index lists) of an epoch
    # reason -> count of records the data layer dropped outside batches (e.g. at indexing); batches also
    # carry `skipped: [(id, reason)]`, which the loop counts itself
    skipped: Callable[[], dict[str, int]] = lambda: {}
    num_workers: int = 0
    # Packing (`data.packing`): the packer (state_dict / load_state_dict, saved per rank in checkpoints), and
    # rows -> (packed batch, the same samples unpacked) for the self-check at the start of the run.
    packer: Any = None
    check_pair: Callable[[list[tuple[int, ...]]], tuple[Batch, Batch]] | None = None
    lengths: list[int] | None = None


@dataclass
class RunResult:
    """What a finished run leaves behind."""

    output_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    resumed_from: Path | None = None
    trained: int = 0  # records that reached the model (all processes, whole run)


def grad_accum_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """global_batch / (micro_batch * world_size), which divides exactly (`train.rules.batch_split`)."""
    return global_batch // (micro_batch * world_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on a bf16-capable GPU, else fp32 (bf16 on a CPU is refused by `train.rules.precision_on`)."""
    gpu_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if gpu_bf16 else "fp32"
    return precision


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory, or this process's peak resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def summed_token_loss(model: nn.Module, batch: Batch, device: torch.device,
                      vision_features: torch.Tensor | None = None) -> torch.Tensor:
    """Sum (not mean) of fp32 next-token cross-entropy over the supervised positions of one micro-batch.

    Calls the (possibly DDP/DeepSpeed-wrapped) model on the Batch, so the wrappers' hooks run; the model applies
    the LM head to supervised positions only (`vlm.lm_loss`), never building [B, T, V] logits."""
    return model(batch.to(device), vision_features=vision_features).loss


class Trainer:
    """One run of one recipe: `Trainer(cfg, model, data, strategy).fit()`."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, data: TrainData, strategy: Strategy | None = None,
                 features_fn: Callable[[Batch], torch.Tensor | None] | None = None) -> None:
        self.cfg = cfg
        self.strategy = strategy or build_strategy(cfg.engine.strategy, cfg)
        self.data = data
        self.features_fn = features_fn  # feature cache hook: batch -> vision features (None: use pixels)
        self.output_dir = Path(cfg.checkpoint.output_dir)
        self.precision = resolve_precision(cfg.engine.precision, self.strategy.device)
        self.tf32 = enable_tf32(self.precision, self.strategy.device)
        self.accum = grad_accum_steps(cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size, self.strategy.world_size)
        batches = len(data.epoch_batches(0))
        self.steps_per_epoch = batches // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch has {batches} micro-batches on this rank, fewer than the {self.accum} "
                             f"needed for one step of global_batch_size={cfg.schedule.global_batch_size}")
        self.total_steps = cfg.schedule.max_steps if cfg.schedule.max_steps > 0 else math.ceil(cfg.schedule.epochs * self.steps_per_epoch)
        self.model, self.optimizer = self.strategy.setup(model, lambda m: build_optimizer(m, cfg.optim))
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.state = TrainerState(total_steps=self.total_steps, world_size=self.strategy.world_size,
                                  global_batch_size=cfg.schedule.global_batch_size, micro_batch_size=cfg.schedule.micro_batch_size)
        self.resumed_from: Path | None = None
        self.skip_log: list[tuple[str, str]] = []  # (record id, reason) seen by this process since it started
        config = getattr(model, "config", None)
        anyres = bool(getattr(getattr(config, "vision", None), "anyres", False))
        self.guard = DataGuard(cfg.data, None if anyres else getattr(config, "num_image_tokens", None))
        self.efficiency = EfficiencyLog(self.strategy.unwrap(self.model), self.strategy.device, self.precision)
        self.wait_warner = WaitWarner()
        self._feeder: Feeder | None = None

    # ------------------------------------------------------------------ setup
    def _resume(self) -> None:
        path = resolve_resume(self.cfg.checkpoint.resume, self.output_dir)
        if path is None:
            return
        state = read_trainer_state(path)  # check compatibility before touching the model
        if (state.global_batch_size, state.total_steps) != (self.cfg.schedule.global_batch_size, self.total_steps):
            raise ValueError(f"cannot resume from {path}: it was saved with global_batch_size={state.global_batch_size},"
                             f" total_steps={state.total_steps}; this run has {self.cfg.schedule.global_batch_size}, "
                             f"{self.total_steps}")
        if state.world_size != self.strategy.world_size:
            raise ValueError(f"cannot resume exactly from {path}: saved with world_size={state.world_size}, "
                             f"now {self.strategy.world_size}")
        from train.checkpointing import read_data_state

        saved = read_data_state(path, self.strategy.rank)
        if (saved is None) != (self.data.packer is None):
            raise ValueError(f"cannot resume exactly from {path}: it was saved with data.packing="
                             f"{saved is not None}, this run has data.packing={self.data.packer is not None}")
        if self.data.packer is not None:  # the packs must be the ones the checkpoint was trained on
            self.data.packer.load_state_dict(saved)
        state = load_checkpoint(path, self.strategy, self.model, self.scheduler)
        self.state = state
        self.resumed_from = path
        if self.strategy.is_main:
            truncate_metrics(self.output_dir, state.step)

    def _loader(self, epoch: int, skip: int) -> Iterator[Batch | None]:
        # One DataLoader for the run (its workers persist across epochs); see train/feeding.py.
        if self._feeder is None:
            self._feeder = Feeder(self.data.dataset, self.data.collate, self.data.epoch_batches,
                                  num_workers=self.data.num_workers, device=self.strategy.device)
        return self._feeder.epoch(epoch, skip)

    # ------------------------------------------------------------------ one optimizer step
    def _count_skip(self, record_id: Any, reason: Any) -> None:
        kind = str(reason).split(":", 1)[0]  # the data layer's reasons start with their kind
        self.state.skipped[kind] = self.state.skipped.get(kind, 0) + 1
        self.skip_log.append((str(record_id), str(reason)))

    def _cached_features(self, batch: Batch | None) -> tuple[Batch | None, torch.Tensor | None]:
        """The feature-cache hook's features for `batch`, before any token is counted: with the cache on, images
        are decoded on first use, so a record whose image cannot be decoded is dropped here (skipped and counted
        like the data layer's skips), or stops the run when `data.guards.strict` is set."""
        if self.features_fn is None or batch is None or batch.num_samples == 0:
            return batch, None
        while True:
            try:
                return batch, self.features_fn(batch)
            except ImageLoadError as err:
                bad = sorted({owner for owner, key in zip(sample_image_owners(batch), batch.image_keys)
                              if key == err.path})
                if not bad:
                    raise
                if self.cfg.data.guards.strict:
                    raise ImageLoadError(err.path, f"{err.reason} (records {[batch.ids[i] for i in bad]}; "
                                         "data.guards.strict stops on a bad image)") from None
                for i in bad:
                    self._count_skip(batch.ids[i], f"image: {err}")
                batch = without_samples(batch, bad, int(self.strategy.unwrap(self.model).config.pad_token_id))
                if batch.num_samples == 0:
                    return batch, None

    def _step(self, window: list[Batch | None]) -> dict[str, float]:
        device = self.strategy.device
        t0 = time.perf_counter()
        skips_before = len(self.skip_log)
        for batch in window:
            for record_id, reason in batch.skipped if batch is not None else []:
                self._count_skip(record_id, reason)
        features: list[torch.Tensor | None] = []
        with self.strategy.autocast(self.precision):
            for index, batch in enumerate(window):
                window[index], batch_features = self._cached_features(batch)
                features.append(batch_features)
        window = [b if b is not None and b.num_samples > 0 else None for b in window]
        counts = torch.tensor([float(sum(b.supervised_tokens() for b in window if b)),
                               float(sum(int(b.attention_mask.sum()) for b in window if b)),
                               float(sum(len(b.ids) for b in window if b)),  # records (packed: several a row)
                               float(sum(b.num_samples for b in window if b))], dtype=torch.float64,
                              device=device)
        self.strategy.all_reduce_sum(counts)
        total_sup, total_tokens, samples, rows = (float(x) for x in counts.tolist())
        self.guard.after_step(self.strategy, len(window), samples, total_sup, len(self.skip_log) - skips_before,
                              self.skip_log)  # fail loud (same verdict on every rank) before any forward
        # d(sum of token losses)/d(theta) / global token count, whatever the accumulation and world size;
        # x world_size because DDP/DeepSpeed average gradients over ranks.
        scale = self.strategy.world_size / total_sup if total_sup > 0 else 0.0
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        autocast = self.strategy.autocast(self.precision)
        last = len(window) - 1
        for index, batch in enumerate(window):
            if batch is None and (index < last or total_sup == 0):
                continue
            # Gradients are reduced across ranks only by the backward outside no_sync, which every rank must
            # run: an empty last micro-batch (all its records skipped) still runs a zero-loss one. Not when
            # the whole window is empty on every rank (total_sup is global): then no rank steps.
            sync = contextlib.nullcontext() if index == last else self.strategy.no_sync(self.model)
            with sync:
                if batch is None:
                    self.strategy.backward(self._zero_loss(autocast))
                    continue
                with autocast:
                    token_loss = summed_token_loss(self.model, batch, device, features[index])
                if not token_loss.requires_grad:  # e.g. a text-only batch in align: nothing trainable was used
                    token_loss = token_loss + self._zero_link()
                self.strategy.backward(token_loss * scale)
            loss_sum += token_loss.detach().double()
        self.strategy.all_reduce_sum(loss_sum)
        loss = float(loss_sum) / total_sup if total_sup > 0 else float("nan")
        if total_sup > 0 and not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss}) at step {self.state.step + 1}; the run stopped before the optimizer step. "
                f"Last good checkpoint: {self._last_ckpt_text()}. Lower the learning rate or check the data.")
        grad_norm = float("nan")
        if total_sup > 0:
            grad_norm = self.strategy.clip_and_step(self.cfg.optim.max_grad_norm)
            if not math.isfinite(grad_norm):
                raise NonFiniteLossError(f"non-finite gradient norm at step {self.state.step + 1}; stopped. "
                                         f"Last good checkpoint: {self._last_ckpt_text()}.")
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        self.scheduler.step()
        self.strategy.zero_grad()
        elapsed = time.perf_counter() - t0
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lrs.get("llm", next(iter(lrs.values()))),
                   "supervised_tokens": total_sup, "tokens": total_tokens, "samples": samples,
                   "tokens_per_s": total_tokens / elapsed if elapsed > 0 else 0.0, "step_time_s": elapsed,
                   "samples_per_row": samples / rows if rows > 0 else 0.0}  # packed rows: > 1
        metrics["peak_mem_mb"] = peak_memory_mb(device)
        kept = [(b, f is None and b.pixel_values is not None) for b, f in zip(window, features) if b]
        metrics.update(self.efficiency.step_metrics([b for b, _ in kept], [ran for _, ran in kept], elapsed))
        metrics.update({f"lr_{k}": v for k, v in lrs.items() if not k.endswith("_no_decay")})
        self.state.samples_seen += int(samples)
        self.state.tokens_seen += int(total_tokens)
        return metrics

    def _zero_loss(self, autocast: Any) -> torch.Tensor:
        """0 from a forward of the (wrapped) model on one unsupervised pad token, so that DDP/ZeRO see a real
        forward + backward (their gradient hooks and unused-branch touches run as for any text-only batch)."""
        config = getattr(self.strategy.unwrap(self.model), "config", None)
        batch = Batch.empty(int(getattr(config, "pad_token_id", 0) or 0))
        with autocast:
            loss = summed_token_loss(self.model, batch, self.strategy.device)  # a sum over no positions: 0
        if not loss.requires_grad:
            loss = loss + self._zero_link()
        return loss * 0.0

    def _zero_link(self) -> torch.Tensor:
        """0 attached to every trainable parameter, so backward runs (and DDP syncs zeros) on every rank."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return sum((p.reshape(-1)[0] * 0.0 for p in params), torch.zeros((), device=self.strategy.device))

    def _last_ckpt_text(self) -> str:
        from train.checkpointing import latest_checkpoint

        found = latest_checkpoint(self.output_dir)
        return str(found) if found else "none yet"

    # ------------------------------------------------------------------ the run
    def fit(self) -> RunResult:
        cfg = self.cfg
        if self.strategy.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.output_dir / "train_config.yaml")
        self._resume()
        logger = RunLogger(self.output_dir, total_steps=self.total_steps, start_step=self.state.step,
                           enabled=self.strategy.is_main, tensorboard=cfg.log.tensorboard, progress_bar=cfg.log.progress_bar)
        logger.message(self._banner())
        if self.data.check_pair is not None:
            self._check_packing(logger)
        losses: list[float] = []
        # Loaded models come in eval mode (as from_pretrained); dropout must be on while training. The VLM's
        # train() keeps a fully frozen encoder in eval mode. The caller's mode is restored afterwards.
        was_training = self.model.training
        self.model.train()
        try:
            while self.state.step < self.total_steps:
                it = self._loader(self.state.epoch, self.state.micro_batches_in_epoch)
                exhausted = False
                while self.state.step < self.total_steps and not exhausted:
                    window = [batch for _, batch in zip(range(self.accum), it)]
                    if len(window) < self.accum:
                        exhausted = True  # the epoch's tail shorter than one global batch is dropped
                        break
                    wait_s = it.take_wait()
                    metrics = self._step([to_device(batch, self.strategy.device) for batch in window])
                    self._note_wait(metrics, wait_s, logger)
                    self.state.step += 1
                    self.state.micro_batches_in_epoch += self.accum
                    metrics["epoch"] = self.state.epoch + self.state.micro_batches_in_epoch / (
                        self.steps_per_epoch * self.accum)
                    losses.append(metrics["loss"])
                    if self.state.step % cfg.log.log_every == 0 or self.state.step == self.total_steps:
                        logger.log_step(self.state.step, metrics)
                    if cfg.checkpoint.save_every > 0 and self.state.step % cfg.checkpoint.save_every == 0 and \
                            self.state.step < self.total_steps:
                        self._save()
                    exhausted = self.state.micro_batches_in_epoch >= self.steps_per_epoch * self.accum
                if exhausted:
                    self._end_epoch(logger)
            self.guard.at_end(self.skip_log)  # a run that trained nothing keeps no "final" checkpoint
            self._save()
            summary = self.efficiency.summary()
            if summary:
                logger.message(summary)
        finally:
            self.model.train(was_training)
            self._feeder = None  # its persistent workers end with it
            logger.close()
        if self.strategy.is_main:
            plot_loss_curve(self.output_dir)
        return RunResult(self.output_dir, self.state.step, losses, self._skipped_totals(), self.resumed_from,
                         self.state.samples_seen)

    def _note_wait(self, metrics: dict[str, float], wait_s: float, logger: RunLogger) -> None:
        metrics["loader_wait_s"] = wait_s
        self.efficiency.record(metrics)
        warning = self.wait_warner.check(self.state.step + 1, wait_s, metrics["step_time_s"], self.data.num_workers)
        if warning:
            logger.message(warning)

    def _skipped_totals(self) -> dict[str, int]:
        totals = dict(self.state.skipped)
        for reason, count in self.data.skipped().items():
            totals[f"{reason} (indexing)"] = int(count)
        return totals

    def _end_epoch(self, logger: RunLogger) -> None:
        skipped = self._skipped_totals()
        total = sum(skipped.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
        first = f"; first: {self.skip_log[0][0]!r}: {self.skip_log[0][1]}" if self.skip_log else ""
        logger.message(f"epoch {self.state.epoch} done at step {self.state.step}: skipped records {total} "
                       f"({detail}){first}")
        self.state.epoch += 1
        self.state.micro_batches_in_epoch = 0

    def _save(self) -> None:
        packer = self.data.packer
        data_state = None if packer is None else packer.state_dict(self.state.epoch, self.state.micro_batches_in_epoch)
        save_checkpoint(self.output_dir, self.state, self.strategy, self.model, self.scheduler, self.cfg.checkpoint.keep_last,
                        data_state=data_state)

    # ------------------------------------------------------------------ packing
    def _check_packing(self, logger: RunLogger) -> None:
        """The packing self-check on this rank's next packed micro-batch (PackingCheckError stops the run)."""
        from train.pack_check import check_packing

        assert self.data.check_pair is not None
        batches = self.data.epoch_batches(self.state.epoch)[self.state.micro_batches_in_epoch:]
        unwrapped = self.strategy.unwrap(self.model)  # no DDP/engine hooks: nothing to synchronise here
        result, failures = None, []
        for rows in [mb for mb in batches if mb][:CHECK_ATTEMPTS]:
            packed, unpacked = self.data.check_pair(rows)
            try:
                result = check_packing(unwrapped, packed, unpacked, loss_fn=summed_token_loss,
                                       device=self.strategy.device, precision=self.precision,
                                       features_fn=self.features_fn, autocast=self.strategy.autocast(self.precision))
            except ImageLoadError as err:  # the step that reaches it skips (or stops on, if strict) that record
                failures.append(str(err))
                continue
            if result is not None:
                break
        if self.data.lengths is not None:
            from instruct_data.packing import pack_stats

            stats = pack_stats(self.data.epoch_batches(self.state.epoch), self.data.lengths)
            logger.message(f"packing: {stats.samples} samples in {stats.rows} rows ({stats.samples_per_row:.2f} per "
                           f"row) over {stats.micro_batches} micro-batches this epoch on this rank; padding "
                           f"{stats.padding_ratio:.1%}")
        if result is not None:
            logger.message(result.summary())
        else:
            logger.message(f"packing self-check: no micro-batch of the first {CHECK_ATTEMPTS} could be compared "
                           f"(no supervised token, or images that cannot be decoded: {failures[:2]})")

    def _banner(self) -> str:
        groups = ", ".join(f"{g.name}: {g.num_params:,} params lr {g.lr:g}" for g in summarize(self.optimizer))
        start = f"resumed from {self.resumed_from} at step {self.state.step}" if self.resumed_from else "from scratch"
        return (f"{self.cfg.recipe}: {self.total_steps} steps ({self.steps_per_epoch}/epoch), accumulation "
                f"{self.accum} x micro-batch {self.cfg.schedule.micro_batch_size} x {self.strategy.world_size} process(es), "
                f"{self.precision}{' (TF32 matmuls)' if self.tf32 else ''}, {start}; groups: {groups}")
