"""The training loss without `[B, T, V]` logits: decoder body -> hidden states at supervised positions -> LM head
in row chunks -> fp32 cross-entropy, summed. Equal (values and gradients) to the LLM's own full-logits path."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from conversation.tokenize import IGNORE_INDEX

CHUNK_ROWS = 2048  # rows of hidden states per LM-head call: at vocab 152K one fp32 chunk of logits is 1.2 GB
# Classes whose forward is `lm_head(decoder(...))` plus at most what `logit_transform` reproduces (read in
# transformers 5.23); any other class is checked numerically once, on its first loss.
KNOWN_HEADS = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Phi3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM",
    "CohereForCausalLM", "GraniteForCausalLM", "Olmo2ForCausalLM", "SmolLM3ForCausalLM", "GPT2LMHeadModel",
})


class TokenLoss(NamedTuple):
    """What `VisionLanguageModel.loss(batch)` returns: the summed fp32 next-token CE and the positions it sums over;
    with `per_row`, also that sum per batch row ([B] fp32: minus each row's supervised log-probability)."""

    loss: torch.Tensor
    tokens: int
    per_row: torch.Tensor | None = None


def causal_lm_parts(llm: nn.Module) -> tuple[nn.Module, nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """(decoder body, LM head module, logit transform or None) of a HF causal LM, peft-wrapped or not."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    prefix = getattr(base, "base_model_prefix", "")
    decoder = getattr(base, prefix, None) if prefix else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(decoder, nn.Module) or decoder is base or not isinstance(head, nn.Module):
        raise ValueError(f"{type(base).__name__}: cannot find its decoder body (base_model_prefix {prefix!r}) and LM "
                         "head (get_output_embeddings), which the supervised-only loss needs")
    return decoder, head, logit_transform(base)


def logit_transform(base: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the model's own forward does to the LM head's output: Gemma-2 soft-capping, Cohere's `logit_scale`,
    Granite's `logits_scaling`. Anything else is caught by `check_head_path` on first use."""
    config = base.config
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(base, "logit_scale", None)  # Cohere keeps config.logit_scale on the model
    divisor = getattr(config, "logits_scaling", None)
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if isinstance(scale, (int, float)) and scale != 1:
        steps.append(lambda x: x * scale)
    if isinstance(divisor, (int, float)) and divisor != 1:
        steps.append(lambda x: x / divisor)
    if isinstance(cap, (int, float)) and cap > 0:
        steps.append(lambda x: torch.tanh(x / cap) * cap)
    if not steps:
        return None

    def apply(logits: torch.Tensor) -> torch.Tensor:
        for step in steps:
            logits = step(logits)
        return logits

    return apply


@torch.no_grad()
def check_head_path(llm: nn.Module, embeds: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """Once per LLM of a class not in KNOWN_HEADS: the decoder + head path gives the model's own logits on a few
    positions (in eval mode), else refuse with the reason (its forward changes logits in a way we do not know)."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    if type(base).__name__ in KNOWN_HEADS or getattr(llm, "_vlm_head_path_checked", False):
        return
    decoder, head, transform = causal_lm_parts(llm)
    modes = {module: module.training for module in llm.modules()}
    llm.eval()  # no dropout: both paths must see the same network
    try:
        e = embeds[:1, :8].detach()
        m = None if attention_mask is None else attention_mask[:1, :8]
        theirs = llm(inputs_embeds=e, attention_mask=m, use_cache=False).logits.float()
        ours = head(decoder(inputs_embeds=e, attention_mask=m, use_cache=False)[0])
        ours = (transform(ours) if transform else ours).float()
    finally:
        for module, mode in modes.items():
            module.training = mode
    tolerance = 1e-3 * max(1.0, float(theirs.abs().max()))
    if theirs.shape != ours.shape or float((theirs - ours).abs().max()) > tolerance:
        raise ValueError(f"{type(llm).__name__} ({getattr(llm.config, 'model_type', '?')}): its forward changes the "
                         "LM head's logits in a way the supervised-only loss does not reproduce; add the transform "
                         "to vlm/lm_loss.py:logit_transform")
    llm._vlm_head_path_checked = True


def head_calls(head: nn.Module, rows: int, chunk_rows: int, device: torch.device) -> int:
    """How many chunks to run the head on. Under ZeRO-3 every call of a partitioned head is an all-gather, so all
    ranks must make the same number of calls: the largest count over the ranks (empty chunks pad the rest)."""
    chunks = max(1, -(-rows // chunk_rows))
    weight = getattr(head, "weight", None)
    if hasattr(weight, "ds_id") and torch.distributed.is_available() and torch.distributed.is_initialized():
        count = torch.tensor([chunks], device=device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        chunks = int(count)
    return chunks


def supervised_loss(llm: nn.Module, embeds: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                    position_ids: torch.Tensor | None = None, chunk_rows: int = CHUNK_ROWS,
                    packed: dict[str, Any] | None = None, host_labels: torch.Tensor | None = None,
                    per_row: bool = False) -> TokenLoss:
    """Sum of fp32 next-token CE over the positions whose shifted label is supervised; the head sees only those rows.

    `labels` are unshifted [B, T] (as the collator makes them). Under autograd each chunk is recomputed in the
    backward pass, so at most one chunk of logits is alive at a time. `packed` (packed rows): the decoder's
    attention arguments from `vlm.packing.packed_llm_kwargs`, in place of `attention_mask` and `position_ids`.
    `host_labels`: the same labels on the CPU, where the supervised positions are found without a device sync.
    `per_row`: also the CE summed per row (the preference losses' sequence log-probabilities), same chunks.
    """
    check_head_path(llm, embeds, attention_mask)
    decoder, head, transform = causal_lm_parts(llm)
    batch, length = labels.shape
    source = host_labels if host_labels is not None else labels
    supervised = source[:, 1:] != IGNORE_INDEX  # position t predicts labels[t + 1]
    rows, cols = supervised.nonzero(as_tuple=True)
    flat = (rows * length + cols).to(embeds.device, non_blocking=True)
    targets = source[:, 1:][rows, cols].to(embeds.device, non_blocking=True)
    # Before the decoder is queued: under ZeRO-3 this is an all-reduce, which would otherwise wait for the decoder
    chunks = head_calls(head, targets.shape[0], chunk_rows, embeds.device)
    if packed is not None:
        extra = dict(packed)
    else:
        extra = {"attention_mask": attention_mask}
        if position_ids is not None:
            extra["position_ids"] = position_ids.to(embeds.device)
    hidden = decoder(inputs_embeds=embeds, use_cache=False, **extra)[0]
    picked = hidden.reshape(batch * length, hidden.shape[-1]).index_select(0, flat)

    reduction = "none" if per_row else "sum"

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = head(h)
        if transform is not None:
            logits = transform(logits)
        return F.cross_entropy(logits.float(), y, reduction=reduction)

    total = hidden.new_zeros((), dtype=torch.float32)
    row_sums = hidden.new_zeros((batch,), dtype=torch.float32) if per_row else None
    owners = rows.to(embeds.device, non_blocking=True) if per_row else None
    for index in range(chunks):  # at least one call, on no rows if need be: the head always gets its (zero) grads
        h, y = picked[index * chunk_rows:(index + 1) * chunk_rows], targets[index * chunk_rows:(index + 1) * chunk_rows]
        if torch.is_grad_enabled() and h.requires_grad:
            part = checkpoint(chunk_loss, h, y, use_reentrant=False)
        else:
            part = chunk_loss(h, y)
        if row_sums is not None:
            assert owners is not None
            row_sums = row_sums.index_add(0, owners[index * chunk_rows:(index + 1) * chunk_rows], part)
            part = part.sum()
        total = total + part
    return TokenLoss(total, int(targets.shape[0]), row_sums)
