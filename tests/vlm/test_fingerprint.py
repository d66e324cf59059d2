"""Preprocessing fingerprint: unchanged setups agree, a resize setting or another HF processor implementation is
named as drift, checkpoints and exports carry it, load reports (or, strict, refuses) drift."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vision_encoders.config import VisionEncoderConfig
from vision_encoders.registry import load_vision_encoder
from vision_encoders.testing import make_tiny_clip
from vlm import fingerprint
from vlm.loading import load_model_dir


def _processor_component(spec: str) -> dict:
    return fingerprint.image_processor_component(load_vision_encoder(VisionEncoderConfig(spec=spec)).image_processor())


def test_probes_cover_the_modes_and_an_extreme_aspect_ratio() -> None:
    images = fingerprint.probe_images()
    assert {image.mode for image in images.values()} == {"RGB", "RGBA", "L", "P"}
    assert max(max(i.size) / min(i.size) for i in images.values()) >= 20
    again = fingerprint.probe_images()  # made in code, the same every time
    assert all(images[name].tobytes() == again[name].tobytes() for name in images)


def test_resample_in_the_saved_preprocessor_config_is_named(tmp_path: Path) -> None:
    spec = make_tiny_clip(tmp_path / "clip")
    before = fingerprint.assemble({"image_processor": _processor_component(spec)})
    assert not fingerprint.diff(before, fingerprint.assemble({"image_processor": _processor_component(spec)}))

    config_file = tmp_path / "clip" / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    assert config["resample"] == 3  # bicubic
    config_file.write_text(json.dumps({**config, "resample": 2}))  # bilinear
    drift = fingerprint.diff(before, fingerprint.assemble({"image_processor": _processor_component(spec)}))
    assert "image processor: pixels of probe rgba_300x200 changed" in "\n".join(drift.changes)
    assert len(drift.changes) == len(fingerprint.probe_images())  # every probe is resized, so every one changes
    assert drift.notes == ["image processor: setting resample 3 -> 2"]


def test_size_change_names_the_new_shape(tmp_path: Path) -> None:
    from vision_encoders.preprocess import ImageProcessor

    ours = dict(mean=(0.5,) * 3, std=(0.5,) * 3, aspect_ratio="crop")
    before = fingerprint.assemble({"image_processor": fingerprint.image_processor_component(ImageProcessor(32, **ours))})
    after = fingerprint.assemble({"image_processor": fingerprint.image_processor_component(ImageProcessor(24, **ours))})
    drift = fingerprint.diff(before, after)
    assert "image processor: pixels of probe rgb_64x48 changed (shape [1, 3, 32, 32] -> [1, 3, 24, 24])" in drift.changes
    assert before["digest"] != after["digest"]


def test_tokenizer_drift_names_the_templates(tiny, tmp_path: Path) -> None:
    model = tiny.vlm()
    t0 = time.perf_counter()
    before = fingerprint.compute(model)
    assert time.perf_counter() - t0 < 1.0  # cheap enough for every save and load
    assert not fingerprint.diff(before, fingerprint.compute(model))
    assert set(before["components"]["tokenizer"]["probes"]) >= {"plain", "vicuna_v1", "llama_2", "chatml", "llama_3"}
    assert set(before["versions"]) == set(fingerprint.VERSION_PACKAGES) and before["versions"]["torch"]

    model.tokenizer.add_tokens(["circles"])  # a tokenizer update: one word now splits differently
    drift = fingerprint.diff(before, fingerprint.compute(model))
    assert "tokenizer: ids and labels of template vicuna_v1 changed (length" in "\n".join(drift.changes)
    assert all(line.startswith("tokenizer: ") for line in drift.changes)


def test_checkpoint_carries_it_and_load_reports_drift(tiny_vlm_dir: Path, tmp_path: Path, capsys) -> None:
    import shutil

    stored = fingerprint.load(tiny_vlm_dir)
    assert stored is not None and stored["format"] == fingerprint.FORMAT
    model = load_model_dir(tiny_vlm_dir)
    assert model.preprocessing_fingerprint == stored | {"versions": fingerprint.library_versions()}
    assert "fingerprint drift" not in capsys.readouterr().err

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_vlm_dir, ckpt)
    processor_file = ckpt / "image_processor.json"
    processor_file.write_text(json.dumps({**json.loads(processor_file.read_text()), "resample": "nearest"}))
    load_model_dir(ckpt)
    err = capsys.readouterr().err
    assert "preprocessing fingerprint drift" in err and "image processor: pixels of probe p_50x50 changed" in err
    with pytest.raises(fingerprint.FingerprintDrift, match="pixels of probe l_37x91 changed"):
        load_model_dir(ckpt, strict_fingerprint=True)


@pytest.mark.slow  # export + reload of the tiny model: a few seconds
def test_export_carries_it_and_the_other_hf_backend_is_named(tiny_vlm_dir: Path, tmp_path: Path, capsys) -> None:
    from vlm.hf.convert import export_hf
    from vlm.model import VisionLanguageModel

    out = export_hf(VisionLanguageModel.load(tiny_vlm_dir), tmp_path / "hf")
    stored = fingerprint.load(out)
    assert stored["components"]["image_processor"] == fingerprint.load(tiny_vlm_dir)["components"]["image_processor"]
    hf = stored["components"]["hf_image_processor"]
    assert all("sha256" in entry for entry in hf["probes"].values()), hf

    load_model_dir(out)  # the imported model and the exported processor: as exported
    assert "fingerprint drift" not in capsys.readouterr().err

    backends = {name: fingerprint.hf_image_processor_component(out, backend=name) for name in ("pil", "torchvision")}
    assert backends["pil"]["implementation"] != backends["torchvision"]["implementation"]
    default = hf["implementation"]
    other = next(name for name, c in backends.items() if c["implementation"] != default)
    drift = fingerprint.diff(stored, fingerprint.assemble({**stored["components"], "hf_image_processor": backends[other]}))
    assert drift.changes and all(line.startswith("exported HF image processor: pixels of probe ") for line in drift.changes)
    assert f"exported HF image processor: implementation {default} -> {backends[other]['implementation']}" in drift.notes


def test_anyres_model_counts_the_probe_tokens_from_its_size(tiny) -> None:
    from vlm.inputs import image_token_counter

    model = tiny.vlm("llama", image_aspect_ratio="anyres", image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]])
    found = fingerprint.compute(model)
    tokenizer = found["components"]["tokenizer"]
    assert tokenizer["k"] == image_token_counter(model)((48, 64)) > model.config.num_image_tokens
    shapes = {name: entry["shape"][0] for name, entry in found["components"]["image_processor"]["probes"].items()}
    assert shapes["rgb_64x48"] > 1 and all(n >= 2 for n in shapes.values())  # the whole image plus its tiles
