"""The files the library reads at run time, shipped inside the package (package data, see pyproject.toml).

* ``paper_results.csv``: the thesis's published results (:mod:`falcon.paper`); ``paper_results.md``
  says where each number comes from.
* ``digits.npz``: the bundled 8x8 digits and their train/test split (:mod:`falcon.datasets`).
* ``digits_vgg.pt``: the pretrained ``digits-vgg`` weights (:mod:`falcon.models.digits`); ``DIGITS.md``
  gives both files' provenance, licence and recipe.
* ``claim_digits.csv`` and ``claim_digits_macs.csv``: the summaries of the sweep of FALCON against the other types
  on digits at matched parameter and at matched MAC budgets (``benchmarks/claim_sweep.py [--match macs]``,
  :func:`falcon.experiments.claim.load_summary`; the Accuracy page shows both).

They are found next to this file, so a plain (non-editable) ``pip install .`` finds them too.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
