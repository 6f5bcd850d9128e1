"""Thin entry point for `jaxinterp experiment steering` (the run is jaxinterp.recipes.steering)::

    python experiments/steering.py [--fast] [--flags]
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "steering", *sys.argv[1:]]))
