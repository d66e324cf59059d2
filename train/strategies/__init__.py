"""Multi-process strategies (DDP, DeepSpeed ZeRO) implementing `train.strategy.Strategy`; imported only when chosen."""
