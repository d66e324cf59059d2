"""Training strategies: the `Strategy` interface (base), single process, DDP, DeepSpeed ZeRO, and the registry by name."""
