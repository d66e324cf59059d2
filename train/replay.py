"""`vlm train CONFIG --replay-step N`: recompute step N of a run bit-identically and show its records' losses.

The weights before step N come from the run's latest checkpoint at a step below N (or from the run's start when
there is none); the steps between that checkpoint and N are re-run as the run ran them (same data, same updates),
so any checkpoint before N serves, at the cost of re-running the steps after it. Nothing is written into the run's
checkpoints or logs. The recomputed loss must equal the one logged in metrics.jsonl exactly (`ReplayMismatch`): it does
on CPUs; on GPUs atomics in some backward kernels make re-run steps differ in the last bits unless the run used
deterministic algorithms, so a checkpoint at N - 1 (`checkpoint.save_every: 1` around a spike) is the sure way."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from train.checkpointing import list_checkpoints
from train.errors import ConfigError, ReplayMismatch
from train.loop import Trainer
from train.per_sample import RecordLoss, gather, table
from train.run_logger import read_metrics
from train.step import StepOutcome, train_step


@dataclass
class ReplayResult:
    """What a replay found."""

    step: int
    loss: float
    logged_loss: float
    grad_norm: float
    start: Path | None  # the checkpoint it started from; None: the run's start
    rerun: int  # steps re-run between the checkpoint and the replayed one
    records: list[RecordLoss] = field(default_factory=list)


def start_checkpoint(output_dir: Path, step: int) -> Path | None:
    """The run's latest checkpoint saved before step `step` (at step <= step - 1); None: none, start from scratch."""
    before = [p for p in list_checkpoints(output_dir) if int(p.name.split("-")[1]) < step]
    return before[-1] if before else None


def replay(trainer: Trainer, step: int) -> ReplayResult:
    """Recompute step `step` of `trainer`'s run (built exactly as the run was); raise ReplayMismatch on a difference."""
    if not 1 <= step <= trainer.total_steps:
        raise ConfigError(f"--replay-step {step}: the run has steps 1..{trainer.total_steps}")
    logged = {r["step"]: r for r in read_metrics(trainer.output_dir)}
    if step not in logged or not isinstance(logged[step].get("loss"), (int, float)):
        raise ConfigError(f"--replay-step {step}: {trainer.output_dir}/metrics.jsonl has no loss for step {step} "
                          f"(logged every {trainer.cfg.log.log_every} steps); pick a logged step")
    start = start_checkpoint(trainer.output_dir, step)
    if start is not None:
        trainer.restore(start)
    rerun = step - 1 - trainer.state.step
    outcome = _run_until(trainer, step)
    records = gather(trainer.strategy, outcome.samples)
    result = ReplayResult(step, outcome.loss, float(logged[step]["loss"]), outcome.grad_norm, start, rerun, records)
    if trainer.strategy.is_main:
        origin = f"checkpoint {start}" if start is not None else "the run's start (no checkpoint before it)"
        print(f"replay of step {step} from {origin}, {rerun} step(s) re-run before it:\n{table(records)}", flush=True)
    if result.loss != result.logged_loss:
        raise ReplayMismatch(f"step {step} replayed to loss {result.loss!r}, the run logged {result.logged_loss!r} "
                             f"(difference {result.loss - result.logged_loss:+.3e}); grad norm {result.grad_norm!r} "
                             f"vs logged {logged[step].get('grad_norm')!r}. Changed data, config or code, or (GPU) "
                             "non-deterministic kernels: re-run steps need deterministic backward kernels, a checkpoint "
                             "at step N - 1 only a deterministic forward")
    return result


def _run_until(trainer: Trainer, step: int) -> StepOutcome:
    """Steps from the trainer's position up to and including `step`, as `Trainer._train_epoch` takes them."""
    epoch_end = trainer.steps_per_epoch * trainer.accum
    outcome: StepOutcome | None = None
    was_training = trainer.strategy.unwrap(trainer.model).training
    trainer.model.train()
    try:
        while trainer.state.step < step:
            it = trainer._loader(trainer.state.epoch, trainer.state.micro_batches_in_epoch)
            while trainer.state.step < step and trainer.state.micro_batches_in_epoch < epoch_end:
                window = [batch for _, batch in zip(range(trainer.accum), it)]
                if len(window) < trainer.accum:
                    break
                outcome = train_step(trainer.step_inputs, window)
                trainer.scheduler.step()
                trainer.state.step += 1
                trainer.state.micro_batches_in_epoch += trainer.accum
            if trainer.state.step < step:
                trainer.state.epoch += 1
                trainer.state.micro_batches_in_epoch = 0
    finally:
        trainer.model.train(was_training)
        trainer._feeder = None
    assert outcome is not None
    return outcome
