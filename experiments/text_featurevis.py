"""Thin entry point for `jaxinterp experiment text_featurevis` (the run is jaxinterp.recipes.text_featurevis)::

    python experiments/text_featurevis.py [--fast] [--flags]
"""

import sys

from jaxinterp.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["experiment", "text_featurevis", *sys.argv[1:]]))
