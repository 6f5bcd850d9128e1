"""Towards monosemanticity at laptop scale (the main job; same as `jaxinterp demo`).

    python experiments/monosemanticity.py [--d-mlp 512 --sae-steps 20000 ...]
"""

import sys

from jaxinterp import cli

if __name__ == "__main__":
    raise SystemExit(cli.main(["experiment", "monosemanticity", *sys.argv[1:]]))
