"""`cellops export bioimageio` and `cellops import bioimageio`: registered versions as BioImage Model Zoo packages
and back (placeholder: being written)."""

from __future__ import annotations

import argparse

#: The sub-commands this module adds to ``cellops``.
COMMANDS = ()


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add :data:`COMMANDS` to the ``cellops`` parser's sub-commands."""


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser, tracking_uri: str) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code."""
    raise NotImplementedError(args.command)
