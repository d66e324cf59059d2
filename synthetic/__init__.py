"""The synthetic world: a tiny, learnable image domain with data, eval files and a tokenizer in public formats."""
