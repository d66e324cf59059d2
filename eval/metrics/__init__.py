"""Metrics identical to the official scorers of each benchmark, quirks included."""
