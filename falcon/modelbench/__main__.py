"""``python -m falcon.modelbench``: the whole-model benchmark's own command line (also ``python -m falcon bench
--model``)."""
import sys

from falcon.modelbench.cli import main

sys.exit(main())
