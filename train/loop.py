"""The training loop: epochs of optimizer steps (`train.step`), resume, logging and checkpoints."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from conversation.errors import ImageLoadError
from train import lockstep
from train.checkpointing import (TrainerState, latest_checkpoint, load_checkpoint, read_data_state,
    read_trainer_state, resolve_resume, save_checkpoint)
from train.config import TrainConfig, save_config
from train.efficiency import EfficiencyLog
from train.errors import ConfigError, NonFiniteLossError
from train.feature_source import FeatureSource
from train.feeding import Feeder, WaitWarner, enable_tf32
from train.guards import DataGuard
from train.optim import build_optimizer, build_scheduler, summarize
from train.preference import preference_objective
from train.recipe_registry import get_recipe
from train.run_logger import RunLogger, plot_loss_curve, truncate_metrics
from train.runtime import grad_accum_steps, peak_memory_mb, reset_peak_memory, resolve_precision
from train.step import SkipTally, StepInputs, StepOutcome, summed_token_loss, train_step
from train.strategies.base import Strategy
from train.strategies.registry import build_strategy
from train.trainability import TrainabilityCheck
from vlm.batch import Batch

CHECK_ATTEMPTS = 8  # packed micro-batches the self-check tries before giving up on comparing (logged)


@dataclass
class TrainData:
    """What the loop needs from the data layer (assembled by the recipe)."""

    dataset: Any  # map-style: __getitem__(i) -> an `instruct_data.item.Item` or a `Skipped`
    collate: Callable[[list[Any]], Batch | None]
    epoch_batches: Callable[[int], list[list[int]]]  # this rank's micro-batches (index lists) of an epoch
    num_workers: int = 0
    # Packing (`data.packing`): the packer (state_dict / load_state_dict, saved per rank in checkpoints), and
    # rows -> (packed batch, the same samples unpacked) for the self-check at the start of the run.
    packer: Any = None
    check_pair: Callable[[list[tuple[int, ...]]], tuple[Batch, Batch]] | None = None


@dataclass
class RunResult:
    """What a finished run leaves behind."""

    output_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    resumed_from: Path | None = None
    trained: int = 0  # records that reached the model (all processes, whole run)


class Trainer:
    """One run of one recipe: `Trainer(cfg, model, data, strategy).fit()`."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, data: TrainData, strategy: Strategy | None = None,
                 features: FeatureSource | None = None) -> None:
        self.cfg = cfg
        self.strategy = strategy or build_strategy(cfg.engine.strategy, cfg)
        self.data = data
        self.features = features  # feature cache on: vision features instead of pixels
        self.output_dir = Path(cfg.checkpoint.output_dir)
        self.precision = resolve_precision(cfg.engine.precision, self.strategy.device)
        self.tf32 = enable_tf32(self.precision, self.strategy.device)
        schedule = cfg.schedule
        self.accum = grad_accum_steps(schedule.global_batch_size, schedule.micro_batch_size, self.strategy.world_size)
        batches = len(data.epoch_batches(0))
        self.steps_per_epoch = batches // self.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"an epoch has {batches} micro-batches on this rank, fewer than the {self.accum} "
                              f"needed for one step of global_batch_size={cfg.schedule.global_batch_size}")
        self.total_steps = (schedule.max_steps if schedule.max_steps > 0
                            else math.ceil(schedule.epochs * self.steps_per_epoch))
        self.trainability = TrainabilityCheck(model, get_recipe(cfg.recipe), cfg.trainable.llm_mode,
                                              cfg.trainable.unfreeze_vision_last_n)
        self.trainability_line = self.trainability.check_start()  # a misconfigured stage stops before the engine
        self.model, self.optimizer = self.strategy.setup(model, self._optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.state = TrainerState(total_steps=self.total_steps, world_size=self.strategy.world_size,
                                  global_batch_size=schedule.global_batch_size,
                                  micro_batch_size=schedule.micro_batch_size)
        self.resumed_from: Path | None = None
        self.skips = SkipTally(self.state.skipped)
        config = model.config
        self.guard = DataGuard(cfg.data, None if config.vision.anyres else config.num_image_tokens)
        self.step_inputs = StepInputs(self.model, self.strategy, self.precision, self.guard, self.skips,
                                      pad_token_id=int(config.pad_token_id), max_grad_norm=cfg.optim.max_grad_norm,
                                      strict=cfg.data.guards.strict, features=features,
                                      preference=preference_objective(cfg))
        self.efficiency = EfficiencyLog(model, self.strategy.device, self.precision)
        self.wait_warner = WaitWarner()
        self.lockstep = lockstep.LockstepCheck(self.strategy) if lockstep.enabled() else None
        self._feeder: Feeder | None = None

    # ------------------------------------------------------------------ setup
    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        optimizer = build_optimizer(model, self.cfg.optim)
        self.groups = summarize(optimizer)  # before the engine replaces the groups' parameters with its partitions
        return optimizer

    def _resume(self) -> None:
        path = resolve_resume(self.cfg.checkpoint.resume, self.output_dir)
        if path is None:
            return
        state = read_trainer_state(path)  # check compatibility before touching the model
        if (state.global_batch_size, state.total_steps) != (self.cfg.schedule.global_batch_size, self.total_steps):
            raise ConfigError(f"cannot resume from {path}: it was saved with global_batch_size="
                              f"{state.global_batch_size}, total_steps={state.total_steps}; this run has "
                              f"{self.cfg.schedule.global_batch_size}, "
                              f"{self.total_steps}")
        if state.world_size != self.strategy.world_size:
            raise ConfigError(f"cannot resume exactly from {path}: saved with world_size={state.world_size}, "
                              f"now {self.strategy.world_size}")
        saved = read_data_state(path, self.strategy.rank)
        if (saved is None) != (self.data.packer is None):
            raise ConfigError(f"cannot resume exactly from {path}: it was saved with data.packing="
                              f"{saved is not None}, this run has data.packing={self.data.packer is not None}")
        if self.data.packer is not None:  # the packs must be the ones the checkpoint was trained on
            self.data.packer.load_state_dict(saved)
        self.state = load_checkpoint(path, self.strategy, self.model, self.scheduler)
        self.skips.counts = self.state.skipped
        self.resumed_from = path
        if self.strategy.is_main:
            truncate_metrics(self.output_dir, self.state.step)

    def _loader(self, epoch: int, skip: int) -> Iterator[Batch | None]:
        # One DataLoader for the run (its workers persist across epochs); see train/feeding.py.
        if self._feeder is None:
            self._feeder = Feeder(self.data.dataset, self.data.collate, self.data.epoch_batches,
                                  num_workers=self.data.num_workers, device=self.strategy.device)
        return self._feeder.epoch(epoch, skip)

    # ------------------------------------------------------------------ one optimizer step
    def _step(self, window: list[Batch | None]) -> dict[str, float]:
        """`train.step.train_step` on the window, then the schedule and this step's metrics."""
        reset_peak_memory(self.strategy.device)  # `peak_mem_mb` is this step's peak (on GPUs)
        t0 = time.perf_counter()
        try:
            outcome = train_step(self.step_inputs, window)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"step {self.state.step + 1}: {err} Last good checkpoint: "
                                     f"{self._last_ckpt_text()}. Lower the learning rate or check the data.") from None
        if self.lockstep is not None:
            self.lockstep.after_step(self.state.step + 1, outcome.passes)
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        self.scheduler.step()
        elapsed = time.perf_counter() - t0
        self.state.samples_seen += int(outcome.records)
        self.state.tokens_seen += int(outcome.tokens)
        return self._metrics(outcome, lrs, elapsed)

    def _metrics(self, outcome: StepOutcome, lrs: dict[str, float], elapsed: float) -> dict[str, float]:
        metrics = {"loss": outcome.loss, "grad_norm": outcome.grad_norm, "lr": lrs.get("llm", next(iter(lrs.values()))),
                   "supervised_tokens": outcome.supervised_tokens, "tokens": outcome.tokens,
                   "samples": outcome.records,
                   "tokens_per_s": outcome.tokens / elapsed if elapsed > 0 else 0.0, "step_time_s": elapsed,
                   "samples_per_row": outcome.records / outcome.rows if outcome.rows > 0 else 0.0}  # packed: > 1
        metrics.update(outcome.extra)  # prefer: reward accuracy and margins
        metrics["peak_mem_mb"] = peak_memory_mb(self.strategy.device)
        metrics.update(self.efficiency.step_metrics(outcome.batches, outcome.encoder_ran, elapsed))
        metrics.update({f"lr_{k}": v for k, v in lrs.items() if not k.endswith("_no_decay")})
        return metrics

    def _last_ckpt_text(self) -> str:
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
                           enabled=self.strategy.is_main, tensorboard=cfg.log.tensorboard,
                           progress_bar=cfg.log.progress_bar)
        logger.message(self._banner())
        logger.message(self.trainability_line)
        if self.data.check_pair is not None:
            self._check_packing(logger)
        losses: list[float] = []
        # Loaded models come in eval mode (as from_pretrained); dropout must be on while training. The VLM's
        # train() keeps a fully frozen encoder in eval mode. The caller's mode is restored afterwards.
        was_training = self.strategy.unwrap(self.model).training
        self.model.train()
        try:
            while self.state.step < self.total_steps:
                self._train_epoch(logger, losses)
            self.guard.at_end(self.skips.log)  # a run that trained nothing keeps no "final" checkpoint
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
        return RunResult(self.output_dir, self.state.step, losses, dict(self.state.skipped), self.resumed_from,
                         self.state.samples_seen)

    def _train_epoch(self, logger: RunLogger, losses: list[float]) -> None:
        """The steps of the current epoch from its saved position, until the epoch or the run ends."""
        it = self._loader(self.state.epoch, self.state.micro_batches_in_epoch)
        epoch_end = self.steps_per_epoch * self.accum  # the epoch's tail shorter than one global batch is dropped
        ran_out = False
        while self.state.step < self.total_steps and self.state.micro_batches_in_epoch < epoch_end:
            window = [batch for _, batch in zip(range(self.accum), it)]
            if len(window) < self.accum:
                ran_out = True
                break
            wait_s = it.take_wait()
            first = not losses
            if first:
                self.trainability.before_first_step()
            metrics = self._step(window)  # host batches: the model moves each one (pinned, non-blocking)
            if first:
                note = self.trainability.after_first_step(self.strategy)
                if note:
                    logger.message(note)
            self._note_wait(metrics, wait_s, logger)
            self.state.step += 1
            self.state.micro_batches_in_epoch += self.accum
            metrics["epoch"] = self.state.epoch + self.state.micro_batches_in_epoch / epoch_end
            losses.append(metrics["loss"])
            if self.state.step % self.cfg.log.log_every == 0 or self.state.step == self.total_steps:
                logger.log_step(self.state.step, metrics)
            if self.cfg.checkpoint.save_every > 0 and self.state.step % self.cfg.checkpoint.save_every == 0 and \
                    self.state.step < self.total_steps:
                self._save()
        if ran_out or self.state.micro_batches_in_epoch >= epoch_end:
            self._end_epoch(logger)

    def _note_wait(self, metrics: dict[str, float], wait_s: float, logger: RunLogger) -> None:
        metrics["loader_wait_s"] = wait_s
        self.efficiency.record(metrics)
        warning = self.wait_warner.check(self.state.step + 1, wait_s, metrics["step_time_s"], self.data.num_workers)
        if warning:
            logger.message(warning)

    def _end_epoch(self, logger: RunLogger) -> None:
        skipped = self.state.skipped
        total = sum(skipped.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
        log = self.skips.log
        first = f"; first: {log[0][0]!r}: {log[0][1]}" if log else ""
        logger.message(f"epoch {self.state.epoch} done at step {self.state.step}: skipped records {total} "
                       f"({detail}){first}")
        self.state.epoch += 1
        self.state.micro_batches_in_epoch = 0

    def _save(self) -> None:
        packer = self.data.packer
        data_state = None if packer is None else packer.state_dict(self.state.epoch, self.state.micro_batches_in_epoch)
        save_checkpoint(self.output_dir, self.state, self.strategy, self.model, self.scheduler,
                        self.cfg.checkpoint.keep_last, data_state=data_state)

    # ------------------------------------------------------------------ packing
    def _check_packing(self, logger: RunLogger) -> None:
        """The packing self-check on this rank's next packed micro-batch (PackingCheckError stops the run)."""
        from train.pack_check import check_packing

        assert self.data.check_pair is not None
        batches = self.data.epoch_batches(self.state.epoch)[self.state.micro_batches_in_epoch:]
        candidates = [mb for mb in batches if mb][:CHECK_ATTEMPTS]
        if self.strategy.partitions_parameters:
            # ZeRO-3 gathers parameters with collectives in every module's forward: every rank checks rank 0's
            # micro-batches, so the same modules run in the same order (and fail alike) on every rank.
            candidates = self.strategy.broadcast_object(candidates)
        unwrapped = self.strategy.unwrap(self.model)  # no DDP/engine hooks (ZeRO-3's are on the modules)
        result, failures = None, []
        for rows in candidates:
            packed, unpacked = self.data.check_pair(rows)
            try:
                result = check_packing(unwrapped, packed, unpacked, loss_fn=summed_token_loss,
                                       device=self.strategy.device, precision=self.precision,
                                       features_fn=self.features.features if self.features else None,
                                       autocast=self.strategy.autocast(self.precision))
            except ImageLoadError as err:  # the step that reaches it skips (or stops on, if strict) that record
                failures.append(str(err))
                continue
            if result is not None:
                break
        if self.data.packer is not None:
            stats = self.data.packer.stats(self.state.epoch)
            logger.message(f"packing: {stats.samples} samples in {stats.rows} rows ({stats.samples_per_row:.2f} per "
                           f"row) over {stats.micro_batches} micro-batches this epoch on this rank; padding "
                           f"{stats.padding_ratio:.1%}")
        if result is not None:
            logger.message(result.summary())
        else:
            logger.message(f"packing self-check: no micro-batch of the first {CHECK_ATTEMPTS} could be compared "
                           f"(no supervised token, or images that cannot be decoded: {failures[:2]})")

    def _banner(self) -> str:
        groups = ", ".join(f"{g.name}: {g.num_params:,} params lr {g.lr:g}" for g in self.groups)
        start = f"resumed from {self.resumed_from} at step {self.state.step}" if self.resumed_from else "from scratch"
        return (f"{self.cfg.recipe}: {self.total_steps} steps ({self.steps_per_epoch}/epoch), accumulation "
                f"{self.accum} x micro-batch {self.cfg.schedule.micro_batch_size} x {self.strategy.world_size} "
                f"process(es), "
                f"{self.precision}{' (TF32 matmuls)' if self.tf32 else ''}, {start}; groups: {groups}")
