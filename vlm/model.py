"""`VisionLanguageModel`: vision encoder -> projector -> image rows spliced into the LLM's input embeddings."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from conversation.templates import get_template
from projectors.base import Projector
from projectors.registry import known_projector_check
from vision_encoders.base import VisionEncoder
from vision_encoders.config import VisionEncoderConfig
from vision_encoders.preprocess import ImageProcessor
from vlm import assembly, checkpoint
from vlm.batch import Batch
from vlm.config import VLMConfig
from vlm.lm_loss import TokenLoss, supervised_loss
from vlm.tokens import unused_rows


class VisionLanguageModel(nn.Module):
    """A vision encoder, a projector and a causal LM, plus the tokenizer and image processor that feed them."""

    def __init__(
        self,
        config: VLMConfig,
        vision_encoder: VisionEncoder,
        projector: Projector,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: ImageProcessor,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = vision_encoder
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    # ----------------------------------------------------------------- construction
    @classmethod
    def build(
        cls,
        vision: VisionEncoderConfig,
        projector: str,
        llm: str,
        template: str,
        *,
        image_token: str = "<image>",
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        torch_dtype: str | None = None,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> "VisionLanguageModel":
        """Assemble a fresh model: load encoder and LLM, add `<image>` (and pad) tokens, build the projector
        (`vlm.assembly.assemble`). `llm_kwargs` go to the LLM's `from_pretrained` (e.g. QLoRA's 4-bit
        `quantization_config`)."""
        get_template(template)  # an unknown name fails here, before minutes of loading
        known_projector_check(projector)
        config = VLMConfig(
            vision=vision, projector=projector, llm=llm, template=template, image_token=image_token,
            attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, torch_dtype=torch_dtype,
        )
        return assembly.assemble(cls, config, llm_kwargs=llm_kwargs)

    def sync_llm_token_ids(self) -> None:
        """Tell the LLM's configs our pad id, so `generate` pads with it and does not warn, and the rows no token
        maps to (padding to a multiple of 64), so that `generate` never emits them."""
        self.llm.config.pad_token_id = self.config.pad_token_id
        if self.llm.generation_config is not None:
            self.llm.generation_config.pad_token_id = self.config.pad_token_id
            self.llm.generation_config.suppress_tokens = unused_rows(self.llm, self.tokenizer) or None

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, torch_dtype: str | None = None,
        lora: str = "merge", **overrides: Any,
    ) -> "VisionLanguageModel":
        """See `vlm.assembly.load` (overrides: attn_implementation, trust_remote_code, llm_kwargs)."""
        return assembly.load(cls, path, device=device, torch_dtype=torch_dtype, lora=lora, **overrides)

    def save(self, path: str | Path, projector_only: bool = False,
             llm_state: dict[str, torch.Tensor] | None = None) -> Path:
        """See `vlm.checkpoint.save`."""
        return checkpoint.save(self, path, projector_only=projector_only, llm_state=llm_state)

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def num_image_tokens(self) -> int:
        return self.config.num_image_tokens

    def train(self, mode: bool = True) -> "VisionLanguageModel":
        """Like nn.Module.train, but a fully frozen vision encoder stays in eval mode (no dropout, same features as a cache)."""
        super().train(mode)
        if not any(p.requires_grad for p in self.vision_encoder.parameters()):
            self.vision_encoder.eval()
        return self

    # ----------------------------------------------------------------- vision path
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, K, D_llm]. The encoder runs without autograd when none of it trains."""
        trains = any(p.requires_grad for p in self.vision_encoder.parameters())
        param = next(self.vision_encoder.parameters())
        with contextlib.nullcontext() if trains else torch.no_grad():
            features = self.vision_encoder(pixel_values.to(device=param.device, dtype=param.dtype))
        return self.project(features)

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """[N, T, D_v] (encoder output or cached features) -> [N, K, D_llm]."""
        if vision_features.dim() != 3 or vision_features.shape[1] != self.config.vision_num_tokens:
            raise ValueError(
                f"vision features must be [N, T={self.config.vision_num_tokens}, D], got {tuple(vision_features.shape)}"
            )
        param = next(self.projector.parameters(), None)
        if param is not None:
            vision_features = vision_features.to(device=param.device, dtype=param.dtype)
        return self.projector(vision_features)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        image_counts: torch.Tensor | list[int] | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
        image_token_counts: list[int] | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the projected image rows scattered into the image-token positions.

        anyres: `pixel_values` holds every image's tiles and `image_sizes` each image's (height, width).
        `image_token_counts`: the image-token positions per row, when the caller read them on the host (from a CPU
        `input_ids`); else they are read back from the device.
        """
        input_ids = input_ids.to(self.device)
        is_image = input_ids == self.config.image_token_id
        # The pad row stands in at image positions; those rows are overwritten below.
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, self.config.pad_token_id))
        if pixel_values is not None and vision_features is not None:
            raise ValueError("pass either pixel_values or vision_features, not both")
        tokens = image_token_counts if image_token_counts is not None else is_image.sum(dim=1).tolist()
        if pixel_values is None and vision_features is None:
            if any(tokens):
                samples = [i for i, n in enumerate(tokens) if n]
                raise ValueError(
                    f"samples {samples} hold image tokens ({[tokens[i] for i in samples]}) but no images were given"
                )
            return embeds
        if self.config.vision.anyres:
            from vlm.anyres_features import image_rows as anyres_rows

            image_rows = anyres_rows(self, tokens, image_sizes, image_counts, pixel_values, vision_features)
            mask = is_image.unsqueeze(-1).expand_as(embeds)
            return embeds.masked_scatter(mask, image_rows.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        n_images = (pixel_values if pixel_values is not None else vision_features).shape[0]
        self._check_counts(tokens, n_images, image_counts)
        if n_images == 0:
            return embeds
        image_rows = self.encode_images(pixel_values) if pixel_values is not None else self.project(vision_features)
        mask = is_image.unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, image_rows.to(embeds.dtype).reshape(-1, embeds.shape[-1]))

    def _check_counts(self, tokens: list[int], n_images: int, image_counts: torch.Tensor | list[int] | None) -> None:
        k = self.config.num_image_tokens
        if image_counts is not None:
            counts = [int(c) for c in (image_counts.tolist() if torch.is_tensor(image_counts) else image_counts)]
            if len(counts) != len(tokens):
                raise ValueError(f"image_counts has {len(counts)} entries for a batch of {len(tokens)} samples")
            for index, (found, count) in enumerate(zip(tokens, counts)):
                if found != count * k:
                    raise ValueError(
                        f"sample {index}: {found} image-token positions but {count} image(s) x K={k} = {count * k} expected"
                    )
            if sum(counts) != n_images:
                raise ValueError(f"image_counts sum to {sum(counts)} but {n_images} images were given")
        elif sum(tokens) != n_images * k:
            raise ValueError(
                f"batch holds {sum(tokens)} image-token positions (per sample {tokens}) but {n_images} image(s) "
                f"x K={k} = {n_images * k} image features"
            )

    # ----------------------------------------------------------------- language path
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        image_counts: torch.Tensor | list[int] | None = None,
        position_ids: torch.Tensor | None = None,
        sample_lengths: list[list[int]] | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
        **llm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """HF-style: the LLM's own output with full logits (and its mean loss when `labels` are given).

        Args: input_ids / attention_mask / labels `[B, L]`; pixel_values `[N, 3, S, S]` (anyres: every image's
        tiles) or vision_features `[N, T, D_v]` in their place; image_counts `[B]` images per row; image_sizes
        `[N]` (height, width) for anyres. Packed rows (`sample_lengths`: per row, the lengths of its samples)
        keep their samples apart: positions restart per sample and attention stays inside each (`vlm.packing`).
        Training uses `loss`, which never builds the `[B, L, V]` logits."""
        embeds = self.embed(input_ids, pixel_values, vision_features, image_counts, image_sizes)
        if sample_lengths is not None:
            llm_kwargs.update(self._packed_kwargs(sample_lengths, embeds, position_ids))
            attention_mask = llm_kwargs.pop("attention_mask")
        elif position_ids is not None:
            llm_kwargs["position_ids"] = position_ids.to(embeds.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(embeds.device)
        if labels is not None:
            labels = labels.to(embeds.device)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)

    def loss(self, batch: Batch, vision_features: torch.Tensor | None = None, per_row: bool = False) -> TokenLoss:
        """The training loss of a `Batch`: the summed fp32 next-token CE over its supervised positions and their
        count, computed without `[B, L, V]` logits (`vlm.lm_loss`); `vision_features` may stand in for its pixels;
        `per_row`: also the sum per row (minus each row's reply log-probability, for the preference losses).
        Under a DDP / DeepSpeed wrapper it is reached through `train.strategies.loss_view.LossView`."""
        if batch.labels is None:
            raise ValueError("the training loss needs a Batch with labels")
        host_labels, tokens, counts = None, None, batch.image_counts
        if batch.input_ids.device.type == "cpu":
            # The bookkeeping (image-token counts, supervised positions) is read here, on the host: read back from a
            # GPU copy, each value would wait for the work queued before it.
            host_labels = batch.labels
            tokens = (batch.input_ids == self.config.image_token_id).sum(dim=1).tolist()
            counts = counts.tolist() if counts is not None else None
            batch = batch.to(self.device, non_blocking=True)
        pixels = None if vision_features is not None else batch.pixel_values
        try:
            embeds = self.embed(batch.input_ids, pixels, vision_features, counts, batch.image_sizes,
                                image_token_counts=tokens)
        except ValueError as err:
            if not batch.ids:
                raise
            # "sample i" in the message is the batch row; name the records too
            raise ValueError(f"{err} [records of this batch, by row: {batch.ids}]") from None
        packed = None
        if batch.sample_lengths is not None:
            packed = self._packed_kwargs(batch.sample_lengths, embeds, batch.position_ids)
        return supervised_loss(self.llm, embeds, batch.attention_mask.to(embeds.device), batch.labels,
                               batch.position_ids, packed=packed, host_labels=host_labels, per_row=per_row)

    def _packed_kwargs(self, sample_lengths: list[list[int]], embeds: torch.Tensor,
                       position_ids: torch.Tensor | None) -> dict[str, Any]:
        from vlm.packing import packed_llm_kwargs

        return packed_llm_kwargs(self.llm, sample_lengths, embeds.shape[1], dtype=embeds.dtype, device=embeds.device,
                                 position_ids=position_ids)

    def generate(self, prompts: Batch | torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """New tokens only, [B, new], for left-padded prompts (a `Batch` or its tensors); see `vlm.generation`."""
        from vlm.generation import generate

        return generate(self, prompts, attention_mask, **kwargs)
