"""The training loss reads its bookkeeping (image-token counts, image counts, supervised positions, packed segment
sizes) from the host batch: the same loss as from a device batch, and on CUDA no synchronisation from our code."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from vlm.batch import Batch
from vlm.testing import make_tiny_vlm, pad_batch, sample_ids

OURS = ("model.py", "lm_loss.py", "packing.py", "anyres_features.py")


def _batch(model, packed: bool) -> Batch:
    samples = [sample_ids(model, k, num_text=5 + k, seed=k) for k in (1, 0, 2)]
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if packed:
        ids = torch.cat(samples)[None]
        lengths = [[len(s) for s in samples]]
        labels = ids.masked_fill(ids == model.config.image_token_id, -100)
        return Batch(ids, torch.ones_like(ids), labels=labels, pixel_values=pixels, image_counts=torch.tensor([3]),
                     sample_lengths=lengths, sample_image_counts=[[1, 0, 2]],
                     position_ids=torch.cat([torch.arange(len(s)) for s in samples])[None])
    ids, mask = pad_batch(samples, model.config.pad_token_id, "right")
    labels = ids.masked_fill((ids == model.config.image_token_id) | (mask == 0), -100)
    return Batch(ids, mask, labels=labels, pixel_values=pixels, image_counts=torch.tensor([1, 0, 2]))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_host_and_device_batches_give_the_same_loss(tmp_path: Path, packed: bool) -> None:
    model = make_tiny_vlm(tmp_path).eval()
    batch = _batch(model, packed)
    with torch.no_grad():
        host = model.loss(batch)
        moved = model.loss(batch.to("cpu"))
    assert host.tokens == moved.tokens > 0 and torch.equal(host.loss, moved.loss)


@pytest.mark.gpu
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_no_host_sync_from_our_loss_path_on_cuda(tmp_path: Path, packed: bool) -> None:
    from vlm.packing import use_varlen_attention

    model = make_tiny_vlm(tmp_path).to("cuda")
    if packed:
        use_varlen_attention(model.llm)
    batch = _batch(model, packed)
    model.loss(batch).loss.backward()  # warm-up (lazy inits)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model.loss(batch).loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    ours = [f"{w.filename}:{w.lineno}" for w in caught
            if "synchroniz" in str(w.message) and Path(w.filename).name in OURS]
    assert not ours, ours
