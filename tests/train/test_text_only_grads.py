"""The text-only hook: the image branch takes part in backward with exactly zero effect on the loss."""
from __future__ import annotations

from pathlib import Path

import torch

from train.strategies.text_only_grads import touch_unused_branches


def test_text_only_batch_gives_projector_zero_gradients_and_same_loss(tmp_path: Path) -> None:
    from vlm.testing import make_tiny_vlm

    model = make_tiny_vlm(tmp_path)
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    model.llm.requires_grad_(True)
    ids = torch.tensor([[5, 6, 7, 8, 9]])

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain_loss, plain_grads = loss_and_grads()
    assert all(g is None for n, g in plain_grads.items() if n.startswith("projector."))
    handles = touch_unused_branches(model, run_encoder=True)
    touched_loss, touched_grads = loss_and_grads()
    assert torch.equal(touched_loss, plain_loss)
    for name, grad in touched_grads.items():
        if name.startswith("projector."):
            assert grad is not None and torch.count_nonzero(grad) == 0, name
        else:
            assert torch.equal(grad, plain_grads[name]), name
    with torch.no_grad():  # no graph being built (inference): the hook stays out of the way
        assert torch.equal(model(input_ids=ids, labels=ids).loss, plain_loss)
    for handle in handles:
        handle.remove()


def _text_only_grads(model: torch.nn.Module, run_encoder: bool) -> dict[str, torch.Tensor | None]:
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    handles = touch_unused_branches(model, run_encoder=run_encoder)
    try:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_anyres_image_newline_gets_a_zero_gradient_on_a_text_only_batch(tmp_path: Path) -> None:
    """ZeRO-2/3 buckets hold the same parameters on every rank: `image_newline` (called only with images) too."""
    from vlm.testing import make_tiny_vlm

    model = make_tiny_vlm(tmp_path, image_aspect_ratio="anyres", image_grid_pinpoints="(1x1),...,(2x2)")
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    grads = _text_only_grads(model, run_encoder=False)
    newline = grads["projector.image_newline.weight"]
    assert newline is not None and torch.count_nonzero(newline) == 0


def test_touch_with_the_identity_projector_and_zero3_encoder_run(tmp_path: Path) -> None:
    """A projector without parameters: the touch runs (no StopIteration inside the hook)."""
    from vlm.testing import make_tiny_vlm

    model = make_tiny_vlm(tmp_path, projector="identity")
    model.requires_grad_(False)
    model.llm.requires_grad_(True)
    grads = _text_only_grads(model, run_encoder=True)
    assert grads and all(g is not None for g in grads.values())
