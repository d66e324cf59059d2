"""`vlm demo`: the synthetic world's main job, with this application's own command runner handed in."""
from __future__ import annotations

import argparse

from synthetic import demo


def register(parser: argparse.ArgumentParser) -> None:
    demo.register(parser)


def main(args: argparse.Namespace) -> int:
    from app.cli import main as run_command

    return demo.main(args, run_command)
