"""Training: the alignment and instruction recipes over one small loop with single/DDP/DeepSpeed strategies."""
