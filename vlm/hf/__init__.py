"""Conversion to and from HF Llava-family directories: `vlm.hf.convert` picks Llava or LlavaNext (anyres)."""
