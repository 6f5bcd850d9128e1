"""Thin entry point for `jaxinterp experiment framework` (the run is `jaxinterp.recipes.framework`).

    python experiments/framework.py            # flags: the fields of the recipe's config (--help)
    python experiments/framework.py --fast     # reduced sizes, as in CI
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "framework", *sys.argv[1:]]))
