"""`vlm train CONFIG [key.sub=value ...] [--resume auto|none|PATH] [--replay-step N]`: run a recipe from a YAML config.

Exit codes (`train.errors`): 0 done, 2 configuration, 3 non-finite loss, 4 data (pre-flight audit or run-time
data guard), 5 a replayed step that differs from the logged one."""
from __future__ import annotations

import argparse
import sys
import warnings

from train.config import ConfigDeprecationWarning, load_config
from train.errors import exit_code


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML training config (see configs/)")
    parser.add_argument("overrides", nargs="*",
                        help="key.sub=value overrides, e.g. optim.lr=2e-5 data.max_length=1024 schedule.max_steps=10")
    parser.add_argument("--resume", default=None,
                        help="auto (latest checkpoint of checkpoint.output_dir), none, or a checkpoint dir")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--replay-step", type=int, default=None, metavar="N",
                        help="recompute step N of the run in checkpoint.output_dir from its latest checkpoint before N "
                             "(re-running the steps in between), check the loss equals the logged one bit for bit "
                             "(exit 5 if not) and print each record's loss; writes no checkpoint")


def main(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except Exception as err:  # noqa: BLE001 - what the user can fix: one line and its exit code; a bug: its traceback
        code = exit_code(err)
        if code is None:
            raise
        print(f"vlm train: {err}", file=sys.stderr)
        return code


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigDeprecationWarning)
        cfg = load_config(args.config, overrides)
    moved = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ConfigDeprecationWarning))
    for message in moved:
        print(f"vlm train: {message}", file=sys.stderr)  # one line per flat-layout key
    for other in caught:
        if not issubclass(other.category, ConfigDeprecationWarning):
            warnings.showwarning(other.message, other.category, other.filename, other.lineno)
    if args.print_config:
        import yaml

        from train import rules

        rules.check_config(cfg)
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from train.guards import summary_line
    from train.recipes import replay_run, run

    if args.replay_step is not None:
        replayed = replay_run(cfg, args.replay_step)
        print(f"replayed step {replayed.step}: loss {replayed.loss!r} equals the logged loss bit for bit")
        return 0
    result = run(cfg)
    quarantined = f", quarantined {sorted(set(result.quarantined))}" if result.quarantined else ""
    print(f"done: {result.steps} steps, final loss {result.losses[-1] if result.losses else float('nan'):.4f}, "
          f"{summary_line(result.trained, result.skipped)}{quarantined}, model in {result.output_dir}")
    return 0
