"""``python -m sinkinterp.train train|sweep ...`` (also the form torchrun needs)."""

import sys

from sinkinterp.train.cli import sweep_main, train_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "sweep": sweep_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m sinkinterp.train {train,sweep} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
