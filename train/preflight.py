"""Pre-flight for a training config: its records, the audit's inputs (read before any weight loads) and outputs."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from conversation.errors import RecordFileError
from instruct_data.audit import AuditError, AuditReport, add_packing_preview, audit_records
from instruct_data.manifest import MANIFEST_NAME, build_manifest, write_manifest
from instruct_data.sources import RecordSource
from train import rules
from train.recipe_registry import get_recipe
from train.config import ConfigError, TrainConfig, load_config
from train.guards import DataFailure

AUDIT_NAME = "audit.json"


def load_train_records(cfg: TrainConfig) -> RecordSource:
    """The run's records (data.data_path files or data.mixture), indexed lazily; an unreadable record file raises
    RecordFileError naming it (none of its records can be trusted), a broken mixture file ConfigError."""
    from instruct_data.mixture import load_mixture
    from instruct_data.sources import load_records

    d = cfg.data
    roots = [d.image_folder] if d.image_folder else []
    if d.mixture:
        try:
            return load_mixture(d.mixture, image_roots=roots, seed=cfg.schedule.seed)
        except RecordFileError:
            raise  # names the record file; `vlm train` exits 2
        except (ValueError, OSError, yaml.YAMLError) as err:
            raise ConfigError(f"data.mixture {d.mixture}: {err}") from None
    return load_records(d.data_path, image_roots=roots)


def training_template(cfg: TrainConfig, inherited: str | None) -> str | None:
    """The template the run trains with: model.template, else the recipe's, else the checkpoint's."""
    # train.rules refuses an inherited `plain` where the recipe trains on conversations
    return cfg.model.template or get_recipe(cfg.recipe).default_template or inherited


def audit_inputs(cfg: TrainConfig, model: Any = None) -> tuple[Any, str, int, Any]:
    """(tokenizer, template, image token id, K or the anyres counter): from a built model, else from
    `model.init_from`'s model config (CONFIG_NAME), image_processor.json and tokenizer directory, without loading
    any weight."""
    if model is not None:
        c = model.config
        if c.vision.anyres:  # image tokens counted per image size
            from vlm.anyres_features import image_token_counter

            return model.tokenizer, c.template, c.image_token_id, image_token_counter(model)
        return model.tokenizer, c.template, c.image_token_id, c.num_image_tokens
    from transformers import AutoTokenizer

    from vlm.checkpoint import TOKENIZER_DIR
    from vlm.config import VLMConfig

    directory = Path(str(cfg.model.init_from))
    config = VLMConfig.load(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR, trust_remote_code=config.trust_remote_code)
    k: Any = config.num_image_tokens
    if config.vision.anyres:
        from vlm.anyres_features import checkpoint_token_counter

        k = checkpoint_token_counter(str(directory), config)
    return tokenizer, training_template(cfg, config.template), config.image_token_id, k


def audit_config(cfg: TrainConfig, records: RecordSource, model: Any = None,
                 sample: int | None = None) -> AuditReport:
    tokenizer, template, image_token_id, k = audit_inputs(cfg, model)
    report = audit_records(records, template, tokenizer, image_token_id=image_token_id, num_image_tokens=k,
                           max_length=cfg.data.max_length, sample=sample, max_skip_ratio=cfg.data.guards.max_skip_ratio,
                           where=cfg.data.mixture or ", ".join(cfg.data.data_path))
    if cfg.data.packing:  # samples per pack and the padding left, from the audited lengths
        add_packing_preview(report, cfg.data.resolved_pack_length(), cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size)
    return report


def write_outputs(cfg: TrainConfig, records: RecordSource, report: AuditReport | None, out_dir: str | Path) -> None:
    """audit.json and data_manifest.json.gz into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if report is not None:
        report.write(out / AUDIT_NAME)
    write_manifest(build_manifest(records, seed=cfg.schedule.seed, mixture=cfg.data.mixture), out / MANIFEST_NAME)


def run_preflight(cfg: TrainConfig, records: RecordSource, strategy: Any, model: Any = None) -> AuditReport | None:
    """`vlm train`'s sampled audit (data.audit.sample records; 0: off) and manifest; raises AuditError.

    Every process audits (the same records, the same verdict); only the main one prints and writes."""
    d = cfg.data
    if len(records) == 0:
        raise DataFailure(f"no records to train on: {d.mixture or ', '.join(d.data_path)} hold(s) no record")
    report = None
    if d.audit.sample != 0:
        t0 = time.perf_counter()
        report = audit_config(cfg, records, model, sample=d.audit.sample)
        if strategy.is_main:
            print(f"{report.table()}\n  ({time.perf_counter() - t0:.1f} s)", flush=True)
    if strategy.is_main:
        write_outputs(cfg, records, report, cfg.checkpoint.output_dir)
    if report is not None:
        report.check(strict=d.audit.strict)
    return report


# ---------------------------------------------------------------------------- `vlm data audit`
def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true", help="warnings are errors too")
    parser.add_argument("--sample", type=int, default=-1, help="records drawn evenly (default -1: all)")
    parser.add_argument("--out", type=Path, help="where audit.json and the data manifest go (default: output_dir)")


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
            from train.recipes import build_model

            model = build_model(cfg)
        report = audit_config(cfg, records, model, sample=args.sample)
    except (ConfigError, FileNotFoundError, DataFailure, ValueError) as err:
        print(f"vlm data audit: {err}", file=sys.stderr)
        return 2
    print(report.table())
    out = args.out or Path(cfg.checkpoint.output_dir)
    write_outputs(cfg, records, report, out)
    print(f"wrote {out / AUDIT_NAME} and {out / MANIFEST_NAME}")
    try:
        report.check(strict=args.strict)
    except AuditError as err:
        print(f"vlm data audit: {err}", file=sys.stderr)
        return 1
    return 0
