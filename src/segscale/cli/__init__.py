"""The `segscale` command line."""

from segscale.cli.app import main

__all__ = ["main"]
