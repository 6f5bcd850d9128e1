"""Indirect object identification: activation patching, attribution patching, logit lens.

A thin entry point; the run is :func:`jaxinterp.recipes.ioi.run_ioi` (also
``jaxinterp experiment ioi``). Flags are the fields of ``IOIConfig``::

    python experiments/ioi.py                  # ~1-2 minutes on 2 CPU cores
    JAXINTERP_FAST=1 python experiments/ioi.py # a smaller, quicker run
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "ioi", *sys.argv[1:]]))
