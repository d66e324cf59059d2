"""Benchmark loaders reading the official files as users download them, yielding uniform `EvalItem`s."""
