"""Adding the `<image>` (and pad) special tokens to a tokenizer and giving them embedding rows in the LLM."""
from __future__ import annotations

import torch
from tokenizers import AddedToken
from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_PAD_TOKEN = "<pad>"


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
    return llm.get_input_embeddings().weight.shape[0]


def resize_for_tokenizer(llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, added_ids: list[int]) -> list[int]:
    """Grow the embeddings to cover the tokenizer (never shrink); set the rows of `added_ids` and of every
    row beyond the old size to the mean row. Returns those ids (sorted), the rows a reload must restore."""
    old_rows = embedding_rows(llm)
    new_ids = sorted(set(added_ids) | set(range(old_rows, len(tokenizer))))
    input_weight = llm.get_input_embeddings().weight
    output = llm.get_output_embeddings()
    means = [input_weight[:old_rows].detach().float().mean(0)]
    if output is not None and output.weight is not input_weight:
        means.append(output.weight[:old_rows].detach().float().mean(0))
    if len(tokenizer) > old_rows:
        # mean_resizing=False: its covariance sampling is random and fails on tiny models; we set rows below
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weights = [llm.get_input_embeddings().weight]
    output = llm.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    with torch.no_grad():
        for weight, mean in zip(weights, means):
            for token_id in new_ids:
                weight[token_id] = mean.to(weight.dtype)
    return new_ids
