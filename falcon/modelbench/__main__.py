"""``python -m falcon.modelbench``: the whole-model benchmark's own command line (also ``python -m falcon bench
--model``)."""
import sys

from falcon.modelbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
