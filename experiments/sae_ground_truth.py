"""Every SAE architecture against a known sparse dictionary in superposition (MMCS).

    python experiments/sae_ground_truth.py
"""

import sys

from jaxinterp import cli

if __name__ == "__main__":
    raise SystemExit(cli.main(["experiment", "sae-ground-truth", *sys.argv[1:]]))
