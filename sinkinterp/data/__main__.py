"""``python -m sinkinterp.data ...``: the data command line (see sinkinterp.data.cli)."""

import sys

from sinkinterp.data.cli import main

sys.exit(main(prog="python -m sinkinterp.data"))
