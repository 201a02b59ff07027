import sys

from sinkinterp.cli import main

sys.exit(main())
