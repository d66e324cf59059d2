"""Pre-flight data audit: what a run's records become under its template, tokenizer, K and max_length."""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from conversation.errors import ImageLoadError, RecordError
from conversation.templates import Template, get_template
from conversation.tokenize import IGNORE_INDEX, tokenize_conversation
from instruct_data.dataset import skip_reason
from instruct_data.packing import pack_preview
from instruct_data.preference_records import record_conversation
from instruct_data.sources import RecordSource
from vlm.inputs import ImageTokenCounter, Size

DEFAULT_SAMPLE = 2000  # records drawn evenly for the audit at the start of `vlm train`
TRUNCATION_WARN = 0.05  # a larger truncated share is worth a warning
EXAMPLES = 3  # record ids kept per skip kind, to name in messages
AUDIT_CHUNK = 512  # records per task of a worker process


class AuditError(ValueError):
    """The audit found data that cannot train (or, in strict mode, a warning); the message says why."""


@dataclass
class SourceStats:
    """Counts for one source (dataset of the mixture, or record file)."""

    selected: int = 0  # records of this source in the run (after the mixture), all of them, not only audited
    audited: int = 0
    trained: int = 0
    truncated: int = 0
    unsupervised: int = 0  # kept, but with no supervised token (no assistant turn)
    supervised_tokens: int = 0
    tokens: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason kind -> count


@dataclass
class AuditReport:
    """The numbers of an audit, its errors and warnings; `table()` for a terminal, `to_dict()` for JSON."""

    template: str
    num_image_tokens: int
    max_length: int | None
    num_records: int
    audited: int
    sampled: bool
    sources: dict[str, SourceStats] = field(default_factory=dict)
    image_records: int = 0
    image_records_fitting: int = 0  # image records kept (their image blocks fit in max_length)
    image_records_unfit: int = 0  # image records skipped because their image blocks exceed max_length
    min_image_tokens: int = 0  # fewest image tokens of an image record (K x its images)
    min_image_record_length: int = 0  # tokens of the shortest image record, untruncated
    anyres: bool = False  # image tokens counted per image size (then num_image_tokens is 0)
    image_tokens: list[int] = field(default_factory=list)  # anyres: tokens of each audited image
    lengths: list[int] = field(default_factory=list)  # untruncated token length per audited, tokenizable record
    # per audited record, its length as training makes it (truncated; 0 if skipped): what packing's length cache
    # holds; None once a record failed beyond the record checks (training would not give it a length)
    exact: list[int] | None = field(default_factory=list, repr=False)
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # skip kind -> first (id, reason)
    packing: dict[str, Any] | None = None  # with data.packing: what packing makes of the audited records
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- totals
    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.sources.values())

    def skipped(self) -> Counter:
        out: Counter = Counter()
        for s in self.sources.values():
            out.update(s.skipped)
        return out

    def histogram(self) -> list[dict[str, Any]]:
        """Token lengths in power-of-two bins (64, 128, ...) up to the longest record."""
        if not self.lengths:
            return []
        top = max(max(self.lengths), 64)
        edges = [0] + [2 ** k for k in range(6, int(np.ceil(np.log2(top))) + 1)]
        if edges[-1] < top:
            edges.append(2 * edges[-1])
        counts, _ = np.histogram(self.lengths, bins=edges)
        rows = [{"from": int(lo), "to": int(hi), "records": int(c)} for lo, hi, c in zip(edges, edges[1:], counts)]
        while rows and rows[0]["records"] == 0:  # from the shortest record's bin on
            rows.pop(0)
        return rows

    def to_dict(self) -> dict[str, Any]:
        lengths = np.asarray(self.lengths) if self.lengths else np.zeros(1)
        return {
            "template": self.template, "num_image_tokens": self.num_image_tokens, "max_length": self.max_length,
            "num_records": self.num_records, "audited": self.audited, "sampled": self.sampled,
            "trained": self.total("trained"), "truncated": self.total("truncated"),
            "skipped": dict(self.skipped()), "skip_share": self.skip_share(),
            "truncated_share": self.total("truncated") / max(self.audited, 1),
            "supervised_tokens": self.total("supervised_tokens"),
            "supervised_tokens_per_template": {self.template: self.total("supervised_tokens")},
            "image_records": self.image_records, "image_records_fitting": self.image_records_fitting,
            "image_records_unfit": self.image_records_unfit,
            "min_image_tokens": self.min_image_tokens, "min_image_record_length": self.min_image_record_length,
            "image_tokens_per_image": self._image_token_stats(),
            "tokens_per_record": {"mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
                                  "p99": float(np.percentile(lengths, 99)), "max": int(lengths.max()),
                                  "histogram": self.histogram()},
            "sources": {name: {**{k: v for k, v in vars(s).items() if k != "skipped"}, "skipped": dict(s.skipped)}
                        for name, s in self.sources.items()},
            "examples": {k: [list(x) for x in v] for k, v in self.examples.items()},
            "packing": self.packing,
            "errors": self.errors, "warnings": self.warnings,
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def _image_token_stats(self) -> dict[str, float] | None:
        if not self.image_tokens:
            return None
        counts = np.asarray(self.image_tokens)
        return {"min": int(counts.min()), "mean": float(counts.mean()), "max": int(counts.max()), "images": len(counts)}

    def _image_tokens_text(self) -> str:
        stats = self._image_token_stats()
        if not self.anyres:
            return f"K={self.num_image_tokens} image tokens per image"
        if stats is None:
            return "anyres image tokens (no image audited)"
        return f"anyres image tokens per image min {stats['min']} / mean {stats['mean']:.0f} / max {stats['max']}"

    def skip_share(self) -> float:
        return sum(self.skipped().values()) / max(self.audited, 1)

    # ---------------------------------------------------------------- terminal
    def table(self) -> str:
        what = f"{self.audited} of {self.num_records} records (sampled evenly)" if self.sampled \
            else f"all {self.num_records} records"
        lines = [f"data audit: {what}; template {self.template}, {self._image_tokens_text()}, "
                 f"max_length={self.max_length}"]
        head = f"  {'source':<24}{'selected':>9}{'audited':>9}{'trained':>9}{'trunc':>7}{'skipped':>9}" \
               f"{'sup.tokens':>12}{'tok/rec':>9}"
        lines.append(head)
        for name, s in self.sources.items():
            per = s.tokens / s.trained if s.trained else 0.0
            lines.append(f"  {name[:23]:<24}{s.selected:>9}{s.audited:>9}{s.trained:>9}{s.truncated:>7}"
                         f"{sum(s.skipped.values()):>9}{s.supervised_tokens:>12}{per:>9.1f}")
        skipped = self.skipped()
        if skipped:
            kinds = ", ".join(f"{k}: {n}" for k, n in skipped.most_common())
            lines.append(f"  skipped {sum(skipped.values())} ({self.skip_share():.1%}): {kinds}")
            for kind, items in self.examples.items():
                lines += [f"    {kind} e.g. {rid!r}: {reason}" for rid, reason in items]
        if self.image_records:
            lines.append(f"  records with images: {self.image_records}, "
                         f"fitting max_length: {self.image_records_fitting}")
        hist = self.histogram()
        if hist:
            total = max(sum(h["records"] for h in hist), 1)
            lines.append("  tokens per record (before truncation):")
            for h in hist:
                bar = "#" * round(30 * h["records"] / total)
                lines.append(f"    {h['from']:>6}-{h['to']:<6}{h['records']:>8}  {bar}")
        if self.packing:
            p = self.packing
            lines.append(f"  packing into rows of {p['pack_length']} tokens: {p['samples_per_row']:.1f} samples per row, "
                         f"padding left {p['padding_ratio']:.1%} ({p['rows']} rows of {p['samples']} audited samples)")
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  ERROR: {e}" for e in self.errors]
        return "\n".join(lines)

    def check(self, strict: bool = False) -> None:
        """Raise AuditError naming every error (and, when strict, every warning)."""
        problems = self.errors + (self.warnings if strict else [])
        if problems:
            raise AuditError("data audit failed: " + "; ".join(problems))


def add_packing_preview(report: AuditReport, pack_length: int, step_samples: int, rows_per_micro_batch: int) -> None:
    """Fill `report.packing` from the audited lengths (truncated at max_length, as training truncates them)."""
    cap = report.max_length or pack_length
    lengths = [min(n, cap) for n in report.lengths if min(n, cap) <= pack_length]
    stats = pack_preview(lengths, pack_length, step_samples, rows_per_micro_batch)
    report.packing = {"pack_length": pack_length, "samples": stats.samples, "rows": stats.rows,
                      "samples_per_row": stats.samples_per_row, "padding_ratio": stats.padding_ratio}


def _sample_indices(n: int, sample: int | None) -> np.ndarray:
    if sample is None or sample < 0 or sample >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, num=max(sample, 1)).round().astype(np.int64))


def audit_records(
    records: RecordSource,
    template: str | Template,
    tokenizer: Any,
    *,
    image_token_id: int,
    num_image_tokens: ImageTokenCounter | int | Callable[[Size], int],
    max_length: int | None,
    sample: int | None = None,
    max_skip_ratio: float = 0.01,
    where: str = "the data files",
    workers: int = 1,
    progress: bool = False,
) -> AuditReport:
    """Tokenize every record (or `sample` evenly drawn ones) as the dataset will, without loading images.

    `num_image_tokens`: the model's `ImageTokenCounter` (K, or a function of an image's (height, width), is
    wrapped into one). When it counts per size (anyres), sizes are read from the image files' headers, as the
    dataset does, and an unreadable one is a skip as there. With `workers` > 1 the records are split in chunks
    over worker processes and the parts merged in record order: the report is the one a single process makes.
    """
    from tqdm import tqdm

    from instruct_data.parallel import ordered_map

    template = get_template(template)
    n = len(records)
    indices = _sample_indices(n, sample)
    count = ImageTokenCounter.of(num_image_tokens)
    report = AuditReport(template.name, count.k, max_length, n, len(indices), len(indices) < n, anyres=count.needs_size)
    for i in range(n):  # per-source counts after the mixture: every record, no parsing
        report.sources.setdefault(records.source_name(i), SourceStats()).selected += 1
    chunks = [indices[a:a + AUDIT_CHUNK] for a in range(0, len(indices), AUDIT_CHUNK)]
    payload = (records, template, tokenizer, image_token_id, count, max_length)
    bar = tqdm(total=len(indices), unit="rec", desc="audit", disable=None if progress else True, file=sys.stderr)
    min_image_tokens = None
    for part in ordered_map(_audit_part, chunks, payload, workers if len(chunks) > 1 else 1):
        min_image_tokens = _merge(report, part, min_image_tokens)
        bar.update(part.audited)
    bar.close()
    report.min_image_tokens = min_image_tokens or 0
    _judge(report, max_skip_ratio, where)
    return report


def _merge(report: AuditReport, part: AuditReport, min_image_tokens: int | None) -> int | None:
    """Add a chunk's counts to `report` (chunks come in record order: lists and first examples stay in order)."""
    for name, stats in part.sources.items():
        into = report.sources.setdefault(name, SourceStats())
        for f in ("audited", "trained", "truncated", "unsupervised", "supervised_tokens", "tokens"):
            setattr(into, f, getattr(into, f) + getattr(stats, f))
        into.skipped.update(stats.skipped)
    for f in ("image_records", "image_records_fitting", "image_records_unfit"):
        setattr(report, f, getattr(report, f) + getattr(part, f))
    report.image_tokens.extend(part.image_tokens)
    report.lengths.extend(part.lengths)
    if part.exact is None:
        report.exact = None
    elif report.exact is not None:
        report.exact.extend(part.exact)
    for kind, examples in part.examples.items():
        kept = report.examples.setdefault(kind, [])
        kept.extend(examples[: EXAMPLES - len(kept)])
    if part.min_image_record_length:
        shortest = report.min_image_record_length
        report.min_image_record_length = min(shortest, part.min_image_record_length) if shortest else \
            part.min_image_record_length
    if part.image_records:
        min_image_tokens = part.min_image_tokens if min_image_tokens is None else min(min_image_tokens,
                                                                                      part.min_image_tokens)
    return min_image_tokens


def _audit_part(payload: tuple, indices: np.ndarray) -> AuditReport:
    """The audit of some records (`min_image_tokens` their fewest image tokens; unjudged), for `_merge`."""
    records, template, tokenizer, image_token_id, count, max_length = payload
    anyres = count.needs_size
    report = AuditReport(template.name, count.k, max_length, len(records), len(indices), False, anyres=anyres)
    min_image_tokens = None
    for i in indices:
        i = int(i)
        stats = report.sources.setdefault(records.source_name(i), SourceStats())
        stats.audited += 1
        rid, conv = f"#{i}", None
        try:
            conv = record_conversation(records, i)  # a preference pair: its longer side
            rid = conv.id
            sizes = _image_sizes(conv.images, records.image_roots(i)) if anyres else None
            counts = count.for_images(sizes)
            if conv.images:
                report.image_records += 1
                per_image = count.per_image(len(conv.images), sizes)
                need = sum(per_image)
                min_image_tokens = need if min_image_tokens is None else min(min_image_tokens, need)
                if anyres:
                    report.image_tokens.extend(per_image)
            full = tokenize_conversation(conv, template, tokenizer, image_token_id=image_token_id,
                                         num_image_tokens=counts)
            report.lengths.append(len(full.input_ids))
            if conv.images:
                shortest = report.min_image_record_length
                report.min_image_record_length = min(shortest, len(full.input_ids)) if shortest else len(full.input_ids)
            sample_ = full
            if max_length is not None and len(full.input_ids) > max_length:
                sample_ = tokenize_conversation(conv, template, tokenizer, image_token_id=image_token_id,
                                                num_image_tokens=counts, max_length=max_length)
                stats.truncated += 1
        except (RecordError, ImageLoadError) as exc:
            reason = skip_reason(exc)
            _skip(report, stats, exc.record_id if isinstance(exc, RecordError) else rid, reason)
            report.image_records_unfit += bool(conv and conv.images and "images do not fit" in reason)
            if report.exact is not None:
                report.exact.append(0)
            continue
        except (ValueError, TypeError, RecursionError) as exc:  # unreadable beyond the record checks
            _skip(report, stats, rid, f"record: unreadable: {type(exc).__name__}: {exc}")
            report.exact = None
            continue
        if report.exact is not None:
            report.exact.append(len(sample_.input_ids))
        if conv.images:
            report.image_records_fitting += 1
        stats.trained += 1
        stats.tokens += len(sample_.input_ids)
        supervised = sum(1 for x in sample_.labels[1:] if x != IGNORE_INDEX)
        stats.supervised_tokens += supervised
        stats.unsupervised += supervised == 0
    report.min_image_tokens = min_image_tokens or 0
    return report


def _image_sizes(refs: list[str], roots: list[Path]) -> list[Size]:
    """anyres: each image's header size, which its token count comes from (ImageLoadError as the dataset would skip it)."""
    from conversation.images import image_size, resolve_image_path

    if refs and not roots:
        raise ImageLoadError(refs[0], "no image root configured for this record")
    return [image_size(resolve_image_path(ref, roots)) for ref in refs]


def _skip(report: AuditReport, stats: SourceStats, rid: str, reason: str) -> None:
    kind = reason.split(":", 1)[0]
    stats.skipped[kind] += 1
    examples = report.examples.setdefault(kind, [])
    if len(examples) < EXAMPLES:
        examples.append((rid, reason))


def _judge(report: AuditReport, max_skip_ratio: float, where: str) -> None:
    """Errors: data that cannot train. Warnings: data that trains worse than the user probably expects."""
    max_length = report.max_length
    if report.image_records_unfit and not report.image_records_fitting:
        report.errors.append(
            f"images do not fit max_length: {report._image_tokens_text()}, the smallest image record needs "
            f"{report.min_image_tokens} image tokens vs max_length={max_length}; no record with an image fits "
            f"(the shortest image record has {report.min_image_record_length} tokens: raise data.max_length "
            "to at least that)")
    if report.audited == 0:
        report.errors.append(f"no records: {where} hold(s) no record")
    for name, s in report.sources.items():
        if s.audited and s.supervised_tokens == 0:
            why = ", ".join(f"{n} {kind}" for kind, n in s.skipped.most_common()) or "none skipped"
            report.errors.append(
                f"source {name!r}: no supervised token in {s.audited} audited records under template "
                f"{report.template!r} ({s.trained} kept, skipped: {why}); it would train at loss 0")
    share = report.skip_share()
    if report.audited and share > max_skip_ratio:
        first = next(iter(report.examples.values()))[0]
        report.warnings.append(f"{share:.1%} of the audited records are skipped, above data.guards.max_skip_ratio="
                               f"{max_skip_ratio:g} ({dict(report.skipped())}; first {first[0]!r}: {first[1]}); "
                               "the run will stop once it sees the same share")
    truncated = report.total("truncated") / max(report.audited, 1)
    if truncated > TRUNCATION_WARN:
        report.warnings.append(f"{truncated:.1%} of the audited records are truncated to max_length={max_length}")
    unsupervised = report.total("unsupervised")
    if unsupervised:
        report.warnings.append(f"{unsupervised} audited records keep no supervised token (no assistant reply after "
                               "truncation or in the record): they cost compute and train nothing")
