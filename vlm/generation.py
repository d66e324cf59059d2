"""Generation through the LLM's own `generate` on the spliced embeddings (KV cache, greedy or sampling, left padding)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vlm.batch import Batch
from vlm.inputs import tensors_batch

if TYPE_CHECKING:
    from vlm.model import VisionLanguageModel


@torch.no_grad()
def generate(
    model: "VisionLanguageModel",
    prompts: Batch | torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_counts: torch.Tensor | list[int] | None = None,
    vision_features: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    streamer: Any = None,
    eos_token_id: int | list[int] | None = None,
    image_sizes: list[tuple[int, int]] | None = None,
    **generate_kwargs: Any,
) -> torch.LongTensor:
    """Continue left-padded prompts (a `Batch`, or its tensors); returns only the new tokens, [B, new] (finished
    rows padded with pad id).

    `eos_token_id` may be a list (the template's stop tokens); default: the tokenizer's eos.
    `streamer` is any transformers streamer (`TextStreamer`, `TextIteratorStreamer`); batch size 1 only.
    `image_sizes`: anyres models only, (height, width) of every image (pixel_values then holds their tiles).
    """
    batch = prompts if isinstance(prompts, Batch) else tensors_batch(model, prompts, attention_mask, pixel_values,
                                                                      image_counts, image_sizes)
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}")
    if input_ids.shape[0] > 1 and bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("generate needs LEFT-padded prompts: some rows end with padding (attention_mask[:, -1] == 0)")
    pixels = None if vision_features is not None else batch.pixel_values
    embeds = model.embed(input_ids, pixels, vision_features, batch.image_counts, batch.image_sizes)
    if eos_token_id is None:
        eos_token_id = model.tokenizer.eos_token_id
    options: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        options.update(temperature=temperature, top_p=top_p)
    else:
        # explicit neutral values: a checkpoint's generation_config may set sampling defaults
        options.update(temperature=None, top_p=None, top_k=None)
    output = model.llm.generate(
        inputs_embeds=embeds,
        attention_mask=attention_mask.to(embeds.device),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=model.config.pad_token_id,
        streamer=streamer,
        use_cache=True,
        **options,
        **generate_kwargs,
    )
    return output
