"""`vlm train CONFIG [key.sub=value ...] [--resume auto|none|PATH]`: run a recipe from a YAML config.

Exit codes: 0 done, 2 configuration, 3 non-finite loss, 4 data (pre-flight audit or run-time data guard)."""
from __future__ import annotations

import argparse
import sys

from train.config import ConfigError, load_config


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML training config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=2e-5 data.max_length=1024")
    parser.add_argument("--resume", default=None, help="auto (latest checkpoint of output_dir), none, or a checkpoint dir")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def main(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    try:
        cfg = load_config(args.config, overrides)
        cfg.validate()
    except (ConfigError, FileNotFoundError) as err:
        print(f"vlm train: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from conversation.errors import RecordFileError
    from instruct_data.audit import AuditError
    from train.guards import DataFailure, summary_line
    from train.recipes import run
    from train.step import NonFiniteLossError

    try:
        result = run(cfg)
    except NonFiniteLossError as err:
        print(f"vlm train: {err}", file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, RecordFileError) as err:
        print(f"vlm train: {err}", file=sys.stderr)
        return 2
    except (AuditError, DataFailure) as err:
        print(f"vlm train: {err}", file=sys.stderr)
        return 4
    print(f"done: {result.steps} steps, final loss {result.losses[-1] if result.losses else float('nan'):.4f}, "
          f"{summary_line(result.trained, result.skipped)}, model in {result.output_dir}")
    return 0
