"""`vlm data validate|convert|audit`: the data layer's commands, plus `audit CONFIG`, which reads a training config."""
from __future__ import annotations

import argparse

from instruct_data import cli as data_cli
from train.preflight import add_audit_arguments, audit_main


def register(parser: argparse.ArgumentParser) -> None:
    sub = data_cli.register(parser)
    audit = sub.add_parser("audit", help="pre-flight audit of a training config's data (all records): K vs "
                                         "max_length, truncation and skips, supervised tokens per source, manifest")
    add_audit_arguments(audit)


def main(args: argparse.Namespace) -> int:
    if args.data_command == "audit":
        return audit_main(args)
    return data_cli.main(args)
