"""Vision encoder backends (HF transformers, timm, open_clip) behind one interface, with their preprocessing."""
