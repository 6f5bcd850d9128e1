"""Toy Models of Superposition: intro figure, basic results, pentagon, dimensionality, phase diagram.

A thin entry point; the run is :func:`jaxinterp.recipes.superposition.run_superposition` (also
``jaxinterp experiment superposition``). Flags are the fields of its config (``--seed``,
``--name``, ``--fast``, ...)::

    python experiments/superposition.py
    python experiments/superposition.py --fast --seed 1 --name superposition_s1
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "superposition", *sys.argv[1:]]))
