"""Resume recomputes the preprocessing fingerprint: drift since the checkpoint is named, and stops the run (exit 2)
under checkpoint.strict_fingerprint."""
from __future__ import annotations

import json
import shutil

import pytest

from train.checkpointing import list_checkpoints
from train.errors import exit_code
from train.recipes import run
from vlm import fingerprint

pytestmark = pytest.mark.slow  # three 2-step tiny runs


def test_resume_names_drift_and_strict_stops(make_cfg, tmp_path, capsys) -> None:
    first = run(make_cfg(save_every=1, keep_last=2, max_steps=2, output_dir=str(tmp_path / "a")))
    ckpt = list_checkpoints(first.output_dir)[0]
    stored = fingerprint.load(ckpt)
    assert stored is not None and stored["components"]["image_processor"]["probes"]["rgba_300x200"]["sha256"]

    clean = tmp_path / "clean"
    shutil.copytree(ckpt, clean)
    capsys.readouterr()
    run(make_cfg(max_steps=2, output_dir=str(tmp_path / "b"), resume=str(clean)))
    assert "fingerprint drift" not in capsys.readouterr().err

    # the checkpoint as another environment would have written it: other pixels for one probe, another torch
    stored["components"]["image_processor"]["probes"]["rgba_300x200"]["sha256"] = "0" * 16
    stored["versions"]["torch"] = "0.0.1"
    drifted = tmp_path / "drifted"
    shutil.copytree(ckpt, drifted)
    fingerprint.save(stored, drifted)
    again = run(make_cfg(max_steps=2, output_dir=str(tmp_path / "c"), resume=str(drifted)))
    err = capsys.readouterr().err
    assert again.resumed_from == drifted and len(again.losses) == 1
    assert "image processor: pixels of probe rgba_300x200 changed" in err and "versions: torch 0.0.1 ->" in err

    with pytest.raises(fingerprint.FingerprintDrift, match="pixels of probe rgba_300x200 changed") as caught:
        run(make_cfg(max_steps=2, output_dir=str(tmp_path / "d"), resume=str(drifted),
                     checkpoint={"strict_fingerprint": True}))
    assert exit_code(caught.value) == 2
    assert json.loads((drifted / fingerprint.FINGERPRINT_FILE).read_text()) == stored  # resume never rewrites it
