"""The training loop under torchrun: 2 processes, gloo on this CPU, DistributedSampler, rank 0 stores."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from falcon.experiments import store
from falcon.experiments.pipeline import ExperimentConfig, run_experiment

ARGS = ["--conv", "falcon", "--rank", "2", "--epochs", "2", "--batch-size", "32", "--limit-train", "128",
        "--limit-test", "64", "--device", "cpu"]


def test_two_processes_with_gloo(tmp_path):
    db = tmp_path / "r.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "falcon", "experiment", *ARGS, "--db", str(db), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads(out.stdout)  # only rank 0 printed: one JSON object
    assert rec["status"] == "completed" and rec["world_size"] == 2
    assert rec["environment"]["backend"] == "gloo"
    for epoch in rec["metrics"]["history"]:
        # each process trained on its half of the 128 images: 2 batches of 32 each, 128 samples in all
        assert epoch["steps_per_process"] == 2 and epoch["samples"] == 128
    (row,) = store.list_runs(db)  # rank 0 wrote one row, rank 1 none
    assert row["run_id"] == rec["run_id"] and row["world_size"] == 2

    # sharded evaluation sums to the single-process numbers (conversion is deterministic)
    single = run_experiment(ExperimentConfig(conv="falcon", hparams={"rank": 2}, epochs=0, batch_size=32,
                                             limit_train=128, limit_test=64, device="cpu"), store=False)
    assert rec["baseline_accuracy"] == pytest.approx(single["baseline_accuracy"])
    assert rec["training_free_accuracy"] == pytest.approx(single["training_free_accuracy"])
