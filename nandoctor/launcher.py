"""The console script's entry point. Importing the CLI (typer, rich) takes a noticeable fraction of a
second; doing it inside the Ctrl-C guard makes an early Ctrl-C as quiet as a late one."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from nandoctor.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.exit(130)
