"""Thin entry point for `jaxinterp experiment circuit-discovery` (the run is `jaxinterp.recipes.circuit_discovery`).

    python experiments/circuit_discovery.py            # flags: the fields of the recipe's config (--help)
    python experiments/circuit_discovery.py --fast     # reduced sizes, as in CI
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "circuit-discovery", *sys.argv[1:]]))
