"""Superposition, memorisation and double descent: test loss against training-set size.

A thin entry point; the run is :func:`jaxinterp.recipes.double_descent.run_double_descent` (also
``jaxinterp experiment double_descent``). Flags are the fields of its config (``--seed``,
``--name``, ``--fast``, ...)::

    python experiments/double_descent.py
    python experiments/double_descent.py --fast --seed 1 --name double_descent_s1
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "double_descent", *sys.argv[1:]]))
