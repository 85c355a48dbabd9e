"""``python -m falcon bench``: a layer, or a whole model with ``--model`` (falcon.modelbench)."""
from __future__ import annotations

import json

from conftest import run_cli


def test_bench_model_runs_the_whole_model_benchmark():
    r = run_cli("bench", "--model", "digits-vgg", "--conv", "falcon", "--rank", "1", "--rounds", "1",
                "--min-run-time", "0.01", "--no-breakdown", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    text = json.dumps(d)
    assert "digits-vgg" in text and "eager" in text


def test_bench_without_a_layer_or_a_model_is_one_line():
    r = run_cli("bench", "--in-channels", "16")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--out-channels" in r.stderr and "--model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
