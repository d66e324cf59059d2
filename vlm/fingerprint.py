"""Preprocessing fingerprint: fixed probes through the image processor and tokenizer + templates, hashed per probe.

A checkpoint, an HF export and every eval `scores.json` carry one; resume, eval, chat and export recompute it and
name what drifted ("image processor: pixels of probe rgba_300x200 changed", "tokenizer: ids of template chatml
changed"), because a library upgrade or another processor implementation silently changes what the model sees.
Drift means different pixels or token ids; library versions and processor settings are reported beside it.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from conversation.records import Conversation, Message
from conversation.templates import TEMPLATES
from conversation.tokenize import tokenize_conversation

if TYPE_CHECKING:
    from vlm.model import VisionLanguageModel

FINGERPRINT_FILE = "preprocessing_fingerprint.json"
FORMAT = 1
VERSION_PACKAGES = ("torch", "transformers", "tokenizers", "pillow", "timm", "open_clip_torch")
COMPONENT_NAMES = {"image_processor": "image processor", "tokenizer": "tokenizer",
                   "hf_image_processor": "exported HF image processor"}


class FingerprintDrift(ValueError):
    """The pixels or token ids of the probes differ from the stored fingerprint and strictness was asked for."""


# ------------------------------------------------------------------------------------------------- probes
def _gradient(width: int, height: int, channels: int, seed: int) -> np.ndarray:
    """A deterministic uint8 [h, w, c] pattern with edges and smooth ramps (resampling filters differ on both)."""
    y, x = np.mgrid[0:height, 0:width]
    planes = [((x * (3 + c + seed) + y * (5 + 2 * c) + ((x // 7 + y // 5) % 2) * 90) % 256) for c in range(channels)]
    return np.stack(planes, axis=-1).astype(np.uint8)


def _palette_image(width: int, height: int) -> Image.Image:
    image = Image.fromarray(_gradient(width, height, 1, 3)[..., 0] % 16, mode="L").convert("P")
    image.putpalette([v for i in range(16) for v in (i * 16, 255 - i * 16, (i * 37) % 256)] + [0] * 720)
    return image


def probe_images() -> dict[str, Image.Image]:
    """The fixed probe images, by name: every common mode and an extreme aspect ratio, made here (no files)."""
    return {
        "rgb_64x48": Image.fromarray(_gradient(64, 48, 3, 0), mode="RGB"),
        "rgba_300x200": Image.fromarray(_gradient(300, 200, 4, 1), mode="RGBA"),
        "l_37x91": Image.fromarray(_gradient(37, 91, 1, 2)[..., 0], mode="L"),
        "p_50x50": _palette_image(50, 50),
        "rgb_400x20": Image.fromarray(_gradient(400, 20, 3, 4), mode="RGB"),
    }


def probe_conversation(image_token: str) -> Conversation:
    """One two-turn conversation with an image, digits, punctuation, accents and double spaces."""
    return Conversation("fingerprint-probe", [
        Message("user", f"{image_token}\nWhat is in the image?  Count: 3, 17; café naïve ÆØ."),
        Message("assistant", "Two red circles and 1 blue square."),
        Message("user", "And the background colour?"),
        Message("assistant", "White."),
    ], images=["probe.png"])


# ------------------------------------------------------------------------------------------------- hashing
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _pixels_entry(values: torch.Tensor) -> dict[str, Any]:
    array = values.detach().to(torch.float32).cpu().contiguous().numpy()
    return {"sha256": _sha(array.tobytes()), "shape": list(array.shape), "mean": round(float(array.mean()), 6)}


def _outcome(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A probe's entry, or its error as the entry (a probe that starts or stops failing is drift too)."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001 - any failure is recorded by its type, not raised
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}


def image_processor_component(processor: Any) -> dict[str, Any]:
    """Our `ImageProcessor` (`process`) on every probe image: a hash, shape and mean of its pixels each."""
    def run(image: Image.Image) -> Callable[[], dict[str, Any]]:
        return lambda: _pixels_entry(processor.process(image)[0])

    settings = processor.to_dict() if hasattr(processor, "to_dict") else {}
    return {"implementation": type(processor).__name__, "settings": _jsonable(settings),
            "probes": {name: _outcome(run(image)) for name, image in probe_images().items()}}


def hf_image_processor_component(directory: str | Path, **load_kwargs: Any) -> dict[str, Any]:
    """The image processor of an HF directory as `AutoImageProcessor.from_pretrained(directory, **load_kwargs)`
    loads it (transformers' default backend unless `backend=` / `use_fast=` say otherwise) on every probe."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(directory), **load_kwargs)

    def run(image: Image.Image) -> Callable[[], dict[str, Any]]:
        return lambda: _pixels_entry(processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"])

    return {"implementation": type(processor).__name__,
            "probes": {name: _outcome(run(image)) for name, image in probe_images().items()}}


def tokenizer_component(tokenizer: Any, image_token: str, image_token_id: int, num_image_tokens: int) -> dict[str, Any]:
    """The probe conversation through every registered template and `tokenizer`: hashes of ids and labels."""
    conv = probe_conversation(image_token)

    def run(template: str) -> Callable[[], dict[str, Any]]:
        def entry() -> dict[str, Any]:
            sample = tokenize_conversation(conv, template, tokenizer, image_token_id=image_token_id,
                                           num_image_tokens=num_image_tokens)
            return {"ids": _sha(np.asarray(sample.input_ids, dtype=np.int64).tobytes()),
                    "labels": _sha(np.asarray(sample.labels, dtype=np.int64).tobytes()),
                    "length": len(sample.input_ids)}
        return entry

    return {"implementation": type(tokenizer).__name__, "vocab": len(tokenizer), "k": num_image_tokens,
            "probes": {name: _outcome(run(name)) for name in sorted(TEMPLATES)}}


def library_versions() -> dict[str, str | None]:
    """The installed versions of the libraries that decide preprocessing (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in VERSION_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def assemble(components: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The fingerprint of `components`: one digest over every probe outcome, and the library versions."""
    outcomes = {name: component["probes"] for name, component in sorted(components.items())}
    return {"format": FORMAT, "digest": _sha(json.dumps(outcomes, sort_keys=True).encode()),
            "components": components, "versions": library_versions()}


def compute(model: VisionLanguageModel) -> dict[str, Any]:
    """The fingerprint of a model's preprocessing: its image processor and its tokenizer under every template
    (image blocks expanded to the model's image-token count; anyres: the count of the probe's size)."""
    config = model.config
    k = config.num_image_tokens
    if config.vision.anyres:  # the count of the probe's size, as vlm.inputs counts it (not imported: a circle)
        height, width = probe_images()["rgb_64x48"].size[::-1]
        k = model.image_processor.anyres_geometry(grid_side=math.isqrt(k)).num_tokens((height, width))
    return assemble({
        "image_processor": image_processor_component(model.image_processor),
        "tokenizer": tokenizer_component(model.tokenizer, config.image_token, config.image_token_id, k),
    })


def for_export(model: VisionLanguageModel, export_dir: str | Path) -> dict[str, Any]:
    """What an HF export holds: the model's image processor, the exported tokenizer (it carries the chat template
    the export adds) and the exported HF image processor as `AutoImageProcessor` loads it by default."""
    from transformers import AutoTokenizer

    components = dict(compute(model)["components"])
    config = model.config
    components["tokenizer"] = tokenizer_component(AutoTokenizer.from_pretrained(str(export_dir)), config.image_token,
                                                  config.image_token_id, components["tokenizer"]["k"])
    components["hf_image_processor"] = hf_image_processor_component(export_dir)
    return assemble(components)


# ------------------------------------------------------------------------------------------------- files
def save(fingerprint: dict[str, Any], directory: str | Path) -> Path:
    path = Path(directory) / FINGERPRINT_FILE
    path.write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load(directory: str | Path) -> dict[str, Any] | None:
    """The fingerprint stored in `directory` (None when it has none: saved before fingerprints existed)."""
    path = Path(directory) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


# ------------------------------------------------------------------------------------------------- diff
@dataclass
class Drift:
    """What differs between two fingerprints: `changes` (pixels / ids: drift) and `notes` (versions, settings)."""

    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def lines(self) -> list[str]:
        return self.changes + self.notes


def _probe_change(component: str, probe: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> str | None:
    label = COMPONENT_NAMES.get(component, component)
    what = "ids" if component == "tokenizer" else "pixels"
    subject = f"template {probe}" if component == "tokenizer" else f"probe {probe}"
    if old == new:
        return None
    if old is None or new is None:
        return f"{label}: {subject} {'added' if old is None else 'missing'}"
    if "error" in old or "error" in new:
        return f"{label}: {subject} was {old.get('error', 'fine')}, now {new.get('error', 'fine')}"
    if component == "tokenizer":
        parts = [key for key in ("ids", "labels") if old.get(key) != new.get(key)]
        length = f" (length {old.get('length')} -> {new.get('length')})" if old.get("length") != new.get("length") else ""
        return f"{label}: {' and '.join(parts) or what} of {subject} changed{length}"
    detail = (f"shape {old.get('shape')} -> {new.get('shape')}" if old.get("shape") != new.get("shape")
              else f"mean {old.get('mean')} -> {new.get('mean')}")
    return f"{label}: {what} of {subject} changed ({detail})"


def diff(old: dict[str, Any], new: dict[str, Any]) -> Drift:
    """Named differences, component by component and probe by probe; components only one side has are skipped
    (an export's HF processor is not recomputed where only the model is loaded)."""
    drift = Drift()
    old_parts, new_parts = old.get("components", {}), new.get("components", {})
    for component in sorted(set(old_parts) & set(new_parts)):
        before, after = old_parts[component], new_parts[component]
        label = COMPONENT_NAMES.get(component, component)
        probes = sorted(set(before.get("probes", {})) | set(after.get("probes", {})))
        for probe in probes:
            change = _probe_change(component, probe, before["probes"].get(probe), after["probes"].get(probe))
            if change:
                drift.changes.append(change)
        if before.get("implementation") != after.get("implementation"):
            drift.notes.append(f"{label}: implementation {before.get('implementation')} -> "
                               f"{after.get('implementation')}")
        settings_before, settings_after = before.get("settings", {}), after.get("settings", {})
        for key in sorted(set(settings_before) | set(settings_after)):
            if settings_before.get(key) != settings_after.get(key):
                drift.notes.append(f"{label}: setting {key} {settings_before.get(key)!r} -> {settings_after.get(key)!r}")
    versions_before, versions_after = old.get("versions", {}), new.get("versions", {})
    for name in sorted(set(versions_before) | set(versions_after)):
        if versions_before.get(name) != versions_after.get(name):
            drift.notes.append(f"versions: {name} {versions_before.get(name)} -> {versions_after.get(name)}")
    return drift


def report(stored: dict[str, Any] | None, current: dict[str, Any], where: str, strict: bool = False,
           stream: Any = None) -> Drift:
    """Print the named drift of `current` against `stored` (from `where`) to stderr; with `strict`, raise
    `FingerprintDrift` when pixels or ids differ. A missing stored fingerprint is said once, never an error."""
    stream = stream or sys.stderr
    if stored is None:
        print(f"preprocessing fingerprint: {where} holds none (saved before fingerprints); nothing to compare",
              file=stream)
        return Drift()
    drift = diff(stored, current)
    if drift:
        lines = "\n  ".join(drift.lines())
        message = (f"preprocessing fingerprint drift against {where} ({stored.get('digest')} -> "
                   f"{current.get('digest')}): the model now sees other pixels or token ids than it did there:\n  "
                   f"{lines}")
        if strict:
            raise FingerprintDrift(message)
        print(f"warning: {message}\n  (strict_fingerprint / --strict-fingerprint makes this an error)", file=stream)
    elif drift.notes:
        print(f"preprocessing fingerprint: same pixels and token ids as {where}; " + "; ".join(drift.notes),
              file=stream)
    return drift


def check_directory(model: VisionLanguageModel, directory: str | Path, strict: bool = False) -> dict[str, Any]:
    """Recompute `model`'s fingerprint, report its drift against the one stored in `directory`, return it."""
    current = compute(model)
    report(load(directory), current, str(directory), strict=strict)
    return current
