"""`vlm data validate|convert|audit`: the data layer's commands, plus `audit CONFIG`, which reads a training config."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from instruct_data import cli as data_cli
from instruct_data.audit import AuditError
from instruct_data.manifest import MANIFEST_NAME
from instruct_data.parallel import default_workers
from train import rules
from train.config import ConfigError, load_config
from train.guards import DataFailure
from train.preflight import AUDIT_NAME, audit_config, load_train_records, write_outputs


def register(parser: argparse.ArgumentParser) -> None:
    sub = data_cli.register(parser)
    audit = sub.add_parser("audit", help="pre-flight audit of a training config's data (all records): K vs "
                                         "max_length, truncation and skips, supervised tokens per source, manifest")
    add_audit_arguments(audit)


def main(args: argparse.Namespace) -> int:
    if args.data_command == "audit":
        return audit_main(args)
    return data_cli.main(args)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true", help="warnings are errors too")
    parser.add_argument("--sample", type=int, default=-1, help="records drawn evenly (default -1: all)")
    parser.add_argument("--out", type=Path, help="where audit.json and the data manifest go (default: output_dir)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes tokenizing the records (default: every core); the report is the same")


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    _options(parser)
    parser.add_argument("config", help="a training YAML config (its data, model and max_length are audited)")
    # Under nested subcommands argparse cannot mix options and positionals: what follows CONFIG is re-parsed.
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="key.sub=value",
                        help="overrides, as for `vlm train` (options may follow them)")


def audit_main(args: argparse.Namespace) -> int:
    """Exit 0 when the data can train, 1 when the audit found errors (or warnings with --strict), 2 for bad input."""
    again = argparse.ArgumentParser(prog="vlm data audit CONFIG")
    _options(again)
    again.add_argument("overrides", nargs="*")
    again.parse_intermixed_args(list(getattr(args, "rest", []) or []), namespace=args)
    try:
        cfg = load_config(args.config, list(args.overrides))
        rules.check_config(cfg)
        rules.check_model(cfg, rules.init_model_config(cfg))
        records = load_train_records(cfg)
        model = None
        if not cfg.model.init_from:  # K comes from the encoder and projector: build the model
            from train.recipes import build_model  # loads the model stack: only for this branch

            model = build_model(cfg)
        workers = args.workers if args.workers is not None else default_workers()
        report = audit_config(cfg, records, model, sample=args.sample, workers=workers, progress=True)
    except (ConfigError, FileNotFoundError, DataFailure, ValueError) as err:
        print(f"vlm data audit: {err}", file=sys.stderr)
        return 2
    print(report.table())
    if cfg.data.packing and not report.sampled:
        print(f"packing's exact lengths {_store_lengths(cfg, records, model, report, workers)}")
    out = args.out or Path(cfg.checkpoint.output_dir)
    write_outputs(cfg, records, report, out)
    print(f"wrote {out / AUDIT_NAME} and {out / MANIFEST_NAME}")
    try:
        report.check(strict=args.strict)
    except AuditError as err:
        print(f"vlm data audit: {err}", file=sys.stderr)
        return 1
    return 0


def _store_lengths(cfg, records, model, report, workers: int) -> str:  # noqa: ANN001 - the audit's own objects
    """The audit's lengths into packing's length cache (`data.length_cache_dir`, else `<output_dir>/lengths`),
    keyed as the training run keys them, so `vlm train` after a full audit reads them instead of tokenizing."""
    from instruct_data.dataset import InstructDataset
    from instruct_data.length_cache import store_audited
    from train.preflight import audit_inputs

    tokenizer, template, image_token_id, counter = audit_inputs(cfg, model)
    d = cfg.data
    dataset = InstructDataset(records, template, tokenizer, image_token_id=image_token_id, num_image_tokens=counter,
                              image_roots=[d.image_folder] if d.image_folder else [], max_length=d.max_length)
    return store_audited(dataset, d.length_cache_dir or Path(cfg.checkpoint.output_dir) / "lengths", report.exact,
                         workers=workers)
