"""Subcommands of the `vlm` CLI that belong to the model package (build, export-hf, import-hf)."""
