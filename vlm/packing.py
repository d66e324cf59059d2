"""Packed rows for the LLM: position ids restarting per sample, attention isolated per sample (a block-diagonal
mask for SDPA / eager, variable-length flash attention where it is installed)."""
from __future__ import annotations

import importlib.util
from typing import Any, Sequence

import torch

MASKED_IMPLEMENTATIONS = ("sdpa", "eager")  # take an explicit 4D mask
FLASH_PREFIX = "flash_attention"  # flash_attention_2 / _3: varlen kernels fed with cumulative sequence lengths
# Our own attention implementation: SDPA per sample, fed the same cumulative lengths as varlen flash attention, so
# attention costs what the samples cost unpacked (a dense block mask costs row_length^2). Without packing
# kwargs it is plain SDPA (generation, eval, unpacked batches).
SDPA_VARLEN = "sdpa_varlen"
VARLEN_IMPLEMENTATIONS = (SDPA_VARLEN,)


class PackingUnsupportedError(RuntimeError):
    """Packed rows cannot be isolated with this attention implementation on this machine."""


def segments(sample_lengths: Sequence[Sequence[int]], seq_len: int) -> list[list[int]]:
    """Per row, the lengths of its segments covering all `seq_len` positions: the samples, then the padding tail
    (one segment of its own, so padding never attends to a sample and no query row is fully masked)."""
    out = []
    for row, lengths in enumerate(sample_lengths):
        used = sum(int(n) for n in lengths)
        if used > seq_len or any(int(n) <= 0 for n in lengths):
            raise ValueError(f"row {row}: sample lengths {list(lengths)} do not fit a row of {seq_len} tokens")
        out.append([int(n) for n in lengths] + ([seq_len - used] if used < seq_len else []))
    return out


def packed_position_ids(sample_lengths: Sequence[Sequence[int]], seq_len: int,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """[B, L] positions 0..n-1 for every sample of every row (and for the padding tail)."""
    rows = [torch.cat([torch.arange(n) for n in segs]) for segs in segments(sample_lengths, seq_len)]
    return torch.stack(rows).to(device) if rows else torch.zeros((0, seq_len), dtype=torch.long, device=device)


def segment_ids(sample_lengths: Sequence[Sequence[int]], seq_len: int,
                device: torch.device | str | None = None) -> torch.Tensor:
    """[B, L] index of the segment each position belongs to (samples 0..k-1, the padding tail k)."""
    rows = [torch.repeat_interleave(torch.arange(len(segs)), torch.tensor(segs)) for segs in
            segments(sample_lengths, seq_len)]
    return torch.stack(rows).to(device) if rows else torch.zeros((0, seq_len), dtype=torch.long, device=device)


def block_diagonal_mask(sample_lengths: Sequence[Sequence[int]], seq_len: int, *, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """[B, 1, L, L] causal attention within each segment only. Boolean (True = attend) when `dtype` is None, else
    additive (0 where allowed, the dtype's minimum elsewhere) as eager attention adds it to the scores."""
    seg = segment_ids(sample_lengths, seq_len, device)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=seg.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)


def flash_attention_available(impl: str = "flash_attention_2") -> bool:
    """CUDA plus the package `impl` runs on (flash-attn 3 ships as `flash_attn_interface`)."""
    package = "flash_attn_interface" if impl == "flash_attention_3" else "flash_attn"
    return torch.cuda.is_available() and importlib.util.find_spec(package) is not None


def flash_kwargs(sample_lengths: Sequence[Sequence[int]], seq_len: int, device: torch.device) -> dict[str, Any]:
    """transformers' varlen flash-attention kwargs: the B rows are read as one flattened sequence cut at every
    segment boundary (`cu_seq_lens_q/k`, int32 cumulative lengths), so no sample attends across one."""
    flat = [n for segs in segments(sample_lengths, seq_len) for n in segs]
    cu = torch.zeros(len(flat) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(flat, dtype=torch.int32), 0)
    longest = max(flat, default=0)
    cu = cu.to(device)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def packed_llm_kwargs(llm: Any, sample_lengths: Sequence[Sequence[int]], seq_len: int, *, dtype: torch.dtype,
                      device: torch.device, position_ids: torch.Tensor | None = None) -> dict[str, Any]:
    """What replaces `attention_mask` in the LLM call for packed rows: position ids plus a 4D block-diagonal mask
    (sdpa / eager) or varlen flash kwargs (flash_attention_*). Other implementations are refused by name."""
    impl = str(getattr(llm.config, "_attn_implementation", None) or "eager")
    if position_ids is None:
        position_ids = packed_position_ids(sample_lengths, seq_len)
    kwargs: dict[str, Any] = {"position_ids": position_ids.to(device)}
    if impl in VARLEN_IMPLEMENTATIONS:
        # The segment sizes stay Python ints: reading them from a device tensor in every layer would wait for the GPU
        cu = flash_kwargs(sample_lengths, seq_len, torch.device("cpu"))["cu_seq_lens_q"]
        kwargs.update(segment_sizes=tuple(torch.diff(cu).tolist()), attention_mask=None)
    elif impl.startswith(FLASH_PREFIX):
        if not flash_attention_available(impl):
            raise PackingUnsupportedError(f"packed rows with attn_implementation={impl!r} need a CUDA GPU and the "
                                          "flash-attn package; use sdpa or eager here")
        kwargs.update(flash_kwargs(sample_lengths, seq_len, device), attention_mask=None)
    elif impl == "sdpa":
        kwargs["attention_mask"] = block_diagonal_mask(sample_lengths, seq_len, device=device)
    elif impl == "eager":
        kwargs["attention_mask"] = block_diagonal_mask(sample_lengths, seq_len, dtype=dtype, device=device)
    else:
        raise PackingUnsupportedError(f"packing isolates samples for attn_implementation in "
                                      f"{[*MASKED_IMPLEMENTATIONS, *VARLEN_IMPLEMENTATIONS, FLASH_PREFIX + '_2']}, "
                                      f"not {impl!r}")
    return kwargs


def sdpa_varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention interface: query [B, H, L, D], key/value [B, H_kv, L, D] -> ([B, L, H, D], None).
    With `segment_sizes` (packed rows, flattened; or `cu_seq_lens_q`), causal SDPA on each segment alone; else plain
    SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    sizes = kwargs.pop("segment_sizes", None)
    cu = kwargs.get("cu_seq_lens_q")
    if sizes is None and cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, length, dim = query.shape
    flat = [x.transpose(1, 2).reshape(batch * length, x.shape[1], dim) for x in (query, key, value)]  # [B*L, H, D]
    sizes = list(sizes) if sizes is not None else torch.diff(cu).tolist()
    dropout = dropout if module.training else 0.0
    pieces = []
    # split (not slicing): its backward concatenates the segments' gradients instead of adding a zero-filled
    # full-size tensor per segment
    for q, k, v in zip(*(x.split(sizes) for x in flat)):
        q, k, v = (x.transpose(0, 1)[None] for x in (q, k, v))  # [1, H, n, D]
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                                               scale=scaling, enable_gqa=k.shape[1] != heads)
        pieces.append(out[0].transpose(0, 1))  # [n, H, D]
    return torch.cat(pieces).reshape(batch, length, heads, dim), None


def sdpa_varlen_mask(*args: Any, attention_mask: torch.Tensor | None = None, q_offset: Any = 0,
                     **kwargs: Any) -> torch.Tensor | None:
    """The mask `sdpa_varlen` gets: none for a causal call without a padding mask from position 0 (packed rows carry
    their `segment_sizes`; transformers would otherwise build, from their restarting position ids, a [B, 1, L, L] mask
    the segments make useless); SDPA's own mask otherwise (padding, cached decoding, sliding windows, mask overlays)."""
    from transformers.masking_utils import sdpa_mask

    plain = kwargs.get("local_size") is None and not kwargs.get("use_vmap", False)
    if attention_mask is None and plain and isinstance(q_offset, int) and q_offset == 0:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, q_offset=q_offset, **kwargs)


def register_sdpa_varlen() -> None:
    """Make `sdpa_varlen` a transformers attention implementation (its masks for unpadded rows are none)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention)
    AttentionMaskInterface.register(SDPA_VARLEN, sdpa_varlen_mask)


def use_varlen_attention(llm: Any) -> bool:
    """Switch an `sdpa` LLM to `sdpa_varlen` (same results, packed rows at the cost of their samples); True if so."""
    if getattr(llm.config, "_attn_implementation", None) != "sdpa":
        return False
    register_sdpa_varlen()
    llm.set_attn_implementation(SDPA_VARLEN)
    return True
