"""Thin entry point for `jaxinterp experiment sae_scaling` (the run is jaxinterp.recipes.sae_scaling)::

    python experiments/sae_scaling.py [--fast] [--flags]
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "sae_scaling", *sys.argv[1:]]))
