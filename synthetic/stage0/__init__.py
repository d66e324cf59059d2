"""Stage 0: pretrain the synthetic world's tiny LLM and tiny CLIP ViT, saved in standard HF formats."""
