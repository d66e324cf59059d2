"""Adding the `<image>` (and pad) special tokens to a tokenizer and giving them embedding rows in the LLM."""
from __future__ import annotations

import contextlib

import torch
from tokenizers import AddedToken
from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_PAD_TOKEN = "<pad>"
EMBEDDING_ROW_MULTIPLE = 64  # rows rounded up so the LM head's matmul tiles evenly on GPUs


def single_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """The id of `token` when the tokenizer encodes it as exactly one id, else None."""
    if token not in tokenizer.get_vocab():
        return None
    ids = tokenizer.encode(token, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def add_special_tokens(tokenizer: PreTrainedTokenizerBase, image_token: str) -> list[int]:
    """Add `image_token` as one special token and a pad token if missing; return the ids that were added."""
    added: list[str] = []
    if single_token_id(tokenizer, image_token) is None:
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
        added.append(image_token)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": DEFAULT_PAD_TOKEN})
        added.append(DEFAULT_PAD_TOKEN)
    image_id = single_token_id(tokenizer, image_token)
    if image_id is None:
        raise ValueError(f"tokenizer does not encode {image_token!r} as a single token even after adding it")
    return [tokenizer.convert_tokens_to_ids(tok) for tok in added]


def embedding_rows(llm: PreTrainedModel) -> int:
    weight = llm.get_input_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])  # ZeRO-3 partitions hold no rows locally


def embedding_width(llm: PreTrainedModel) -> int:
    weight = llm.get_input_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[1])


def gathered(params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager:
    """Full, writable weights under ZeRO-3 (rank 0's writes are partitioned back on exit); else a no-op."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def _weights(llm: PreTrainedModel) -> list[torch.nn.Parameter]:
    """The input embedding and, when untied, the output embedding."""
    weights = [llm.get_input_embeddings().weight]
    output = llm.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    return weights


def unused_rows(llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Embedding rows no token maps to (padding to a multiple of 64, or a checkpoint's spare rows): generation
    must never emit them."""
    return list(range(len(tokenizer), embedding_rows(llm)))


def resize_for_tokenizer(llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, added_ids: list[int],
                         pad_to_multiple_of: int = 1) -> list[int]:
    """Grow the embeddings to cover the tokenizer (never shrink; rows rounded up to `pad_to_multiple_of`), set the
    rows of `added_ids`, of every id beyond the old size and the padding rows to the mean row. Returns the token ids
    among them (sorted), the rows a reload must restore. Works on ZeRO-3 partitioned weights (gathered here)."""
    old_rows = embedding_rows(llm)
    new_ids = sorted(set(added_ids) | set(range(old_rows, len(tokenizer))))
    with gathered(_weights(llm)):
        means = [w[:old_rows].detach().float().mean(0) for w in _weights(llm)]
    if len(tokenizer) > old_rows:
        # mean_resizing=False: its covariance sampling is random and fails on tiny models; we set rows below
        llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    rows = sorted(set(new_ids) | set(range(max(old_rows, len(tokenizer)), embedding_rows(llm))))
    fill_rows(llm, rows, means)
    return new_ids


def fill_rows(llm: PreTrainedModel, rows: list[int], means: list[torch.Tensor] | None = None) -> None:
    """Set embedding `rows` (input, and untied output) to `means` (default: the mean of the other rows)."""
    if not rows:
        return
    with gathered(_weights(llm)):
        weights = _weights(llm)
        if means is None:
            keep = torch.ones(weights[0].shape[0], dtype=torch.bool)
            keep[rows] = False
            means = [w[keep.to(w.device)].detach().float().mean(0) for w in weights]
        index = torch.tensor(rows, dtype=torch.long)
        with torch.no_grad():
            for weight, mean in zip(weights, means):
                weight[index.to(weight.device)] = mean.to(weight.dtype)
