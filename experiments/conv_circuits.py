"""Thin entry point for `jaxinterp experiment conv_circuits` (the run is jaxinterp.recipes.conv_circuits)::

    python experiments/conv_circuits.py [--fast] [--flags]
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "conv_circuits", *sys.argv[1:]]))
