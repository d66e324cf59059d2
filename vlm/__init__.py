"""Vision-language model: config, splicing, generation, checkpoints, HF Llava export/import."""
