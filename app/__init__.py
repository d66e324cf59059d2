"""The command-line application: the `vlm` entry point and its subcommands."""
