"""argparse value types shared by the command lines: each error names the allowed values."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["int_at_least", "open_unit_float"]


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def open_unit_float(text: str) -> float:
    """A number strictly between 0 and 1 (the sink threshold eps)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in the open interval (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in the open interval (0, 1), got {text}")
    return value
