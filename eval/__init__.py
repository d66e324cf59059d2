"""Evaluation: official-format benchmark loaders, official-exact metrics, a batched resumable runner."""
