"""Subcommands of the `vlm` CLI that the application defines itself (build, export-hf, import-hf, data, demo); the
others live in the package that owns them (`app/cli.py` maps each name to its module)."""
