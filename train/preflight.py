"""Pre-flight for a training config: its records, the audit's inputs (read before any weight loads) and outputs
(`vlm data audit CONFIG` runs the same audit from `app/commands/data.py`)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from conversation.errors import RecordFileError
from instruct_data.audit import AuditReport, add_packing_preview, audit_records
from instruct_data.manifest import MANIFEST_NAME, build_manifest, write_manifest
from instruct_data.sources import RecordSource
from train.recipe_registry import get_recipe
from train.config import ConfigError, TrainConfig
from train.guards import DataFailure
from vlm.inputs import ImageTokenCounter, checkpoint_token_counter, image_token_counter

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


def audit_inputs(cfg: TrainConfig, model: Any = None) -> tuple[Any, str, int, ImageTokenCounter]:
    """(tokenizer, template, image token id, image-token counter): from a built model, else from
    `model.init_from`'s model config (CONFIG_NAME), image_processor.json and tokenizer directory, without loading
    any weight."""
    if model is not None:
        c = model.config
        return model.tokenizer, c.template, c.image_token_id, image_token_counter(model)
    from transformers import AutoTokenizer

    from vlm.checkpoint import TOKENIZER_DIR
    from vlm.config import VLMConfig

    directory = Path(str(cfg.model.init_from))
    config = VLMConfig.load(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR, trust_remote_code=config.trust_remote_code)
    counter = checkpoint_token_counter(directory, config)
    return tokenizer, training_template(cfg, config.template), config.image_token_id, counter


def audit_config(cfg: TrainConfig, records: RecordSource, model: Any = None,
                 sample: int | None = None, workers: int = 1, progress: bool = False) -> AuditReport:
    tokenizer, template, image_token_id, k = audit_inputs(cfg, model)
    report = audit_records(records, template, tokenizer, image_token_id=image_token_id, num_image_tokens=k,
                           max_length=cfg.data.max_length, sample=sample, max_skip_ratio=cfg.data.guards.max_skip_ratio,
                           where=cfg.data.mixture or ", ".join(cfg.data.data_path), workers=workers,
                           progress=progress)
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
