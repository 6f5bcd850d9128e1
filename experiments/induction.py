"""Thin entry point for `jaxinterp experiment induction` (the run is `jaxinterp.recipes.induction`).

    python experiments/induction.py            # flags: the fields of the recipe's config (--help)
    python experiments/induction.py --fast     # reduced sizes, as in CI
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "induction", *sys.argv[1:]]))
