"""The compress-and-fine-tune pipeline, the sweep and its background runner, data sets, and the CLI.

Runs here are tiny (a few hundred digits, one epoch) so the whole file takes seconds; the done-when
numbers (3 epochs on all of digits, the full sweep) are measured by the commands in docs/experiments.md.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import socket
import subprocess
import time

import numpy as np
import pytest
import torch
from conftest import run_cli

from falcon.errors import FalconError
from falcon.experiments import data as exp_data
from falcon.experiments import pipeline, store
from falcon.experiments.pipeline import ExperimentConfig, convert_for_run, run_experiment
from falcon.experiments.sweep import SweepRunner, run_sweep, sweep_configs

TINY = dict(limit_train=96, limit_test=48, epochs=1, batch_size=32, latency=False)  # latency: its own tests
#: latency settings that keep a measurement to about a second here
QUICK_LATENCY = dict(latency=True, latency_rounds=1, latency_min_run_time=0.05)


def tiny(**kw) -> ExperimentConfig:
    return ExperimentConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def digits():
    return exp_data.load_dataset("digits", limit_train=96, limit_test=48)


@pytest.fixture(scope="module")
def baseline(digits):
    cfg = tiny().resolved()
    cfg.channels_last = True
    return pipeline.build_baseline(cfg, digits, torch.device("cpu"))


# ----------------------------------------------------------------------------------------------
# configuration
def test_config_defaults_and_validation():
    assert ExperimentConfig(conv="falcon").resolved().init == "svd"
    assert ExperimentConfig(conv="dsconv", init="gd").resolved().init == "gd"
    r = ExperimentConfig(conv="mobilev2").resolved()
    assert r.init == "random" and r.hparams == {"expansion": 0.5} and r.lr == pipeline.DEFAULT_LR["adamw"]
    assert ExperimentConfig(conv="shuffle").resolved().hparams == {"groups": 2, "width_mult": 1.0}
    assert ExperimentConfig(conv="falcon", hparams={"rank": 3}).resolved().rank == 3
    assert ExperimentConfig(conv="standard").resolved().init == "none"
    for bad, match in (({"conv": "mobilev2", "init": "svd"}, "no svd fit"),
                       ({"conv": "shuffle", "hparams": {"width_mult": 2.0}}, "α"),
                       ({"optimizer": "rmsprop"}, "optimizer"), ({"dataset": "mnist"}, "dataset"),
                       ({"epochs": -1}, "epochs"), ({"lr": 0.0}, "learning rate"),
                       ({"conv": "nope"}, "unknown conv type")):
        with pytest.raises(FalconError, match=match):
            ExperimentConfig(**bad).resolved()


# ----------------------------------------------------------------------------------------------
# conversion keeps what it should
def test_full_rank_falcon_computes_the_baseline(baseline, digits):
    cfg = tiny(conv="falcon", hparams={"rank": 9}).resolved()
    model, layers = convert_for_run(baseline.model, cfg, digits.input_size)
    assert len(layers) == 5 and layers[0]["rank"] == 1 and layers[0]["clamped"]  # the 1-channel stem
    assert max(layer["relative_error"] for layer in layers) < 1e-4
    x = digits.test.tensors[0][:16]
    with torch.no_grad():
        torch.testing.assert_close(model(x), baseline.model(x), atol=2e-3, rtol=1e-3)
    # the baseline itself was not touched
    assert all(type(m).__name__ == "Conv2d" for m in baseline.model.features if hasattr(m, "kernel_size") and
               not isinstance(m, torch.nn.MaxPool2d))


@pytest.mark.parametrize("conv", ["mobilev2", "shuffle"])
def test_competitors_start_random_but_keep_the_other_weights(baseline, digits, conv):
    cfg = tiny(conv=conv).resolved()
    model, layers = convert_for_run(baseline.model, cfg, digits.input_size)
    assert {layer["init"] for layer in layers} == {"random"} and len(layers) == 4  # the stem stays standard
    kept = baseline.model.state_dict()
    new = model.state_dict()
    for name in ("features.0.weight", "features.1.running_mean", "features.4.weight", "classifier.0.weight"):
        torch.testing.assert_close(new[name], kept[name])  # stem conv, BNs after replaced convs, classifier
    assert type(model.features[3]).__name__ in ("MobileConvV2", "ShuffleUnit")


# ----------------------------------------------------------------------------------------------
# one run, end to end
def test_run_experiment_stores_a_complete_record(tmp_path):
    db = tmp_path / "r.sqlite"
    events = []
    rec = run_experiment(tiny(conv="falcon", hparams={"rank": 2}), progress=events.append, db=db)
    assert rec["status"] == "completed" and rec["init"] == "svd" and rec["rank"] == 2
    for key in ("baseline_accuracy", "training_free_accuracy", "finetuned_accuracy"):
        assert 0.0 <= rec[key] <= 1.0
    assert 0 < rec["params"] < rec["baseline_params"] and 0 < rec["macs"] < rec["baseline_macs"]
    from falcon.sizing import size_model  # the same numbers as the cost engine's, 'clean' convention

    assert rec["baseline_params"] == size_model("digits-vgg", convention="clean").params == 135_674
    # the 1→16 stem is full at rank 1 (min(M, D²) = 1): its fit, and so its block, keeps one branch
    stem_branch = 1 * 16 + 3 * 3 * 16
    assert rec["params"] == size_model("digits-vgg", "falcon", convention="clean", rank=2).params - stem_branch
    assert {"data", "convert", "finetune", "final_eval", "total"} <= set(rec["timings"])
    assert rec["environment"]["torch"] == torch.__version__ and rec["device"].startswith("CPU")
    assert rec["metrics"]["history"][-1]["test_accuracy"] == rec["finetuned_accuracy"]
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {e["phase"] for e in events} >= {"baseline", "convert", "training_free", "finetune", "done"}
    (row,) = store.list_runs(db)
    assert row["run_id"] == rec["run_id"] and row["config"]["hparams"] == {"rank": 2}
    assert row["finetuned_accuracy"] == pytest.approx(rec["finetuned_accuracy"])


def test_runs_are_seeded_and_learn(baseline, digits):
    cfg = tiny(conv="falcon", epochs=2, seed=3)
    a = run_experiment(cfg, store=False, baseline=baseline, data=digits)
    b = run_experiment(cfg, store=False, baseline=baseline, data=digits)
    assert [e["loss"] for e in a["metrics"]["history"]] == [e["loss"] for e in b["metrics"]["history"]]
    assert a["finetuned_accuracy"] == b["finetuned_accuracy"]
    hist = a["metrics"]["history"]  # rank-1 falcon starts far off; training brings the loss down
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_stop_ends_the_run_and_stores_it_as_stopped(tmp_path, baseline, digits):
    db = tmp_path / "r.sqlite"
    seen = []

    def should_stop() -> bool:
        return any(e.get("phase") == "finetune" for e in seen)

    rec = run_experiment(tiny(conv="falcon", epochs=5), progress=seen.append, should_stop=should_stop, db=db,
                         baseline=baseline, data=digits)
    assert rec["status"] == "stopped" and rec.get("finetuned_accuracy") is None
    assert store.list_runs(db)[0]["status"] == "stopped"
    assert store.accuracy_points(db) == []


def test_model_must_fit_the_data(digits):
    with pytest.raises(FalconError, match="3-channel images"):
        run_experiment(tiny(model="vgg19-cifar", dataset="digits"), store=False)


def test_baseline_checkpoint(tmp_path):
    from falcon.models.digits import digits_vgg

    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in digits_vgg().state_dict().items()}}, good)
    rec = run_experiment(tiny(conv="falcon", baseline=str(good), epochs=0), store=False)
    assert rec["metrics"]["baseline_source"].startswith("checkpoint")
    bad = tmp_path / "bad.pt"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(FalconError, match="does not fit digits-vgg"):
        run_experiment(tiny(conv="falcon", baseline=str(bad)), store=False)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(FalconError, match="checkpoint"):
        run_experiment(tiny(conv="falcon", baseline=str(junk)), store=False)


# ----------------------------------------------------------------------------------------------
# measured latency (falcon.experiments.latency)
def test_run_stores_its_measured_latency(tmp_path, baseline, digits):
    db = tmp_path / "r.sqlite"
    events = []
    rec = run_experiment(tiny(conv="falcon", epochs=0, **QUICK_LATENCY), progress=events.append, db=db,
                         baseline=baseline, data=digits)
    assert rec["status"] == "completed"
    (row,) = store.list_runs(db)
    lat = row["metrics"]["latency"]
    assert lat["status"] == "ok" and lat["note"] == "" and lat["weights"] == "trained"
    assert lat["device"] == "cpu" and lat["device_name"] and lat["threads"] == torch.get_num_threads()
    assert lat["torch_version"] == torch.__version__ and lat["runtime"] == "eager"
    assert lat["runtime_version"] == f"torch {torch.__version__}"
    assert lat["batch_size"] == 1 and lat["input_size"] == [1, 32, 32] and lat["rounds"] == 1
    assert lat["layout"] in ("contiguous", "channels_last") and lat["layouts"] == "auto"
    for key in ("original_ms", "converted_ms", "original_iqr_ms", "converted_iqr_ms", "speedup"):
        assert lat[key] > 0 or (key.endswith("iqr_ms") and lat[key] >= 0), key
    assert lat["speedup"] == pytest.approx(lat["original_ms"] / lat["converted_ms"])
    # each model in its fastest layout: the minimum over the timed layouts
    conv_times = [t["median_ms"] for t in lat["timings"] if t["model"] == "converted"]
    assert len(conv_times) == 2 and lat["converted_ms"] == min(conv_times)
    assert rec["timings"]["latency"] > 0
    phases = [e for e in events if e["phase"] == "latency"]
    assert phases and phases[0]["message"].startswith("measuring latency") and "ms" in phases[-1]["message"]
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    (point,) = [p for p in store.accuracy_points(db) if p["method"] == "falcon"]
    assert point["latency_ms"] == lat["converted_ms"] and point["latency_runtime"] == "eager"
    assert point["latency_batch"] == 1 and point["latency_device"].startswith("cpu (")


def test_measuring_leaves_the_models_as_they_were(baseline, digits):
    from falcon.experiments.latency import measure_latency

    cfg = tiny(conv="falcon").resolved()
    model, layers = convert_for_run(baseline.model, cfg, digits.input_size)
    model = model.to(memory_format=torch.channels_last).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base_before = {k: v.clone() for k, v in baseline.model.state_dict().items()}
    lat = measure_latency(baseline.model, model, "falcon", cfg.hparams, [r["layer"] for r in layers],
                          digits.input_size, rounds=1, min_run_time=0.05, layout="channels_last")
    assert lat["status"] == "ok" and lat["layout"] == "channels_last" and lat["layouts"] == "channels_last"
    kernels = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert model.training and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    for k, v in baseline.model.state_dict().items():
        torch.testing.assert_close(v, base_before[k], rtol=0, atol=0)
    assert not baseline.model.training and type(baseline.model.features[3]).__name__ == "Conv2d"


def test_no_latency_stores_none(tmp_path, baseline, digits):
    db = tmp_path / "r.sqlite"
    rec = run_experiment(tiny(conv="falcon", epochs=0), db=db, baseline=baseline, data=digits)  # TINY: latency off
    assert "latency" not in rec["metrics"] and "latency" not in rec["timings"]
    assert "latency" not in store.list_runs(db)[0]["metrics"]
    assert all(p["latency_ms"] is None for p in store.accuracy_points(db))
    with pytest.raises(FalconError, match="latency runtime"):
        tiny(latency=True, latency_runtime="tensorrt").resolved()
    with pytest.raises(FalconError, match="latency batch size"):
        tiny(latency=True, latency_batch_size=0).resolved()


def test_unavailable_runtime_or_failed_parity_is_a_note_and_the_run_completes(tmp_path, baseline, digits, monkeypatch):
    from falcon import modelbench

    db = tmp_path / "r.sqlite"
    monkeypatch.setattr(modelbench.measure, "runtime_info", lambda name, device: modelbench.RuntimeInfo(
        name, False, None, "onnxruntime unavailable: the onnxruntime package is not installed"))
    rec = run_experiment(tiny(conv="falcon", epochs=0, latency_runtime="onnxruntime", **QUICK_LATENCY), db=db,
                         baseline=baseline, data=digits)
    assert rec["status"] == "completed" and rec["finetuned_accuracy"] is not None
    lat = store.list_runs(db)[0]["metrics"]["latency"]
    assert lat["status"] == "unavailable" and "not installed" in lat["note"] and "\n" not in lat["note"]
    assert lat.get("converted_ms") is None and lat.get("original_ms") is None  # missing, not made up
    assert all(p["latency_ms"] is None for p in store.accuracy_points(db))
    monkeypatch.undo()

    from falcon.export import Parity

    monkeypatch.setattr(modelbench.tasks, "parity", lambda ref, out, *a, **k: Parity(1.0, 0.5))
    rec = run_experiment(tiny(conv="falcon", epochs=0, **QUICK_LATENCY), store=False, baseline=baseline, data=digits)
    lat = rec["metrics"]["latency"]
    assert rec["status"] == "completed" and lat["status"] == "failed" and "differs from eager" in lat["note"]
    assert lat.get("converted_ms") is None


def test_backfill_measures_a_stored_run_without_latency(tmp_path, capsys):
    from falcon.cli import main

    db = tmp_path / "r.sqlite"
    old = run_experiment(tiny(conv="dsconv", epochs=0), db=db)  # stored without latency (an older run)
    store.save_run({"model": "nope", "dataset": "digits", "conv": "falcon", "rank": 1, "finetuned_accuracy": 0.5,
                    "params": 10, "config": {"model": "nope", "conv": "falcon"}}, db)
    assert main(["experiment", "measure", "--db", str(db), "--latency-rounds", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 runs measured" in out and "cannot rebuild" in out  # the other run: one line
    runs = {r["run_id"]: r for r in store.list_runs(db)}
    lat = runs[old["run_id"]]["metrics"]["latency"]
    assert lat["status"] == "ok" and lat["weights"] == "rebuilt" and lat["baseline_weights"] == "bundled"
    assert lat["converted_ms"] > 0 and lat["original_ms"] > 0 and lat["rounds"] == 1
    assert runs[old["run_id"]]["finetuned_accuracy"] == old["finetuned_accuracy"]  # the rest of the row is kept
    # measured runs are skipped (exit 0: nothing to do); a run that cannot be rebuilt alone: exit 1
    assert main(["experiment", "measure", "--db", str(db), "--run-id", old["run_id"]]) == 0
    assert "has a latency already" in capsys.readouterr().out
    bad = next(r for r in runs if r != old["run_id"])
    assert main(["experiment", "measure", "--db", str(db), "--run-id", bad, "-q"]) == 1
    assert "0 of 1 runs measured" in capsys.readouterr().out


def test_rebuild_checks_the_stored_parameter_counts(tmp_path):
    from falcon.experiments.backfill import rebuild_models

    rec = run_experiment(tiny(conv="falcon", hparams={"rank": 2}, epochs=0), store=False)
    built = rebuild_models(rec)
    assert built["cfg"].hparams == {"rank": 2} and built["input_size"] == (1, 32, 32) and len(built["replaced"]) == 5
    with pytest.raises(FalconError, match="cannot be rebuilt"):
        rebuild_models({**rec, "params": rec["params"] + 1})


# ----------------------------------------------------------------------------------------------
# sweeps
def test_sweep_configs_default_set():
    configs = sweep_configs(ExperimentConfig(epochs=3))
    labels = [(c.conv, c.hparams.get("rank")) for c in configs]
    assert labels == [("falcon", 1), ("falcon", 2), ("falcon", 3), ("dsconv", 1), ("mobilev2", None), ("shuffle", None)]
    assert {c.resolved().init for c in configs if c.conv in ("mobilev2", "shuffle")} == {"random"}
    with pytest.raises(FalconError):
        sweep_configs(convs=["nope"])


def test_run_sweep_shares_one_baseline(tmp_path, monkeypatch):
    calls = []
    real = pipeline.build_baseline
    monkeypatch.setattr(pipeline, "build_baseline", lambda *a, **k: calls.append(1) or real(*a, **k))
    db = tmp_path / "r.sqlite"
    configs = sweep_configs(tiny(), convs=["falcon", "mobilev2"], ranks=[1, 2])
    events = []
    result = run_sweep(configs, progress=events.append, db=db)
    assert len(calls) == 1 and not result["stopped"]
    runs = store.list_runs(db, sweep_id=result["sweep_id"])
    assert [(r["conv"], r["rank"], r["init"]) for r in runs] == [("falcon", 1, "svd"), ("falcon", 2, "svd"),
                                                                  ("mobilev2", None, "random")]
    assert len({r["baseline_accuracy"] for r in runs}) == 1
    sweep_fracs = [e["sweep_fraction"] for e in events]
    assert sweep_fracs == sorted(sweep_fracs) and events[-1]["run"] == 3


def test_sweep_runner_in_a_thread(tmp_path):
    runner = SweepRunner(sweep_configs(tiny(), convs=["falcon"], ranks=[1, 2]), db=tmp_path / "r.sqlite")
    assert runner.snapshot()["status"] == "pending"
    runner.start()
    assert runner.wait(timeout=300)
    snap = runner.snapshot()
    assert snap["status"] == "completed" and snap["fraction"] == 1.0 and snap["error"] is None
    assert len(snap["results"]) == 2 and snap["events"] and snap["runs"] == 2
    assert len(store.list_runs(tmp_path / "r.sqlite", sweep_id=snap["sweep_id"])) == 2
    # the live curves: every run's fine-tuning loss by step, and its held-out accuracy ending at the fine-tuned one
    assert sorted(snap["curves"]) == [1, 2]
    for run, rec in zip((1, 2), snap["results"]):
        curve = snap["curves"][run]
        assert curve["step"] and curve["step"] == sorted(curve["step"]) and all(v > 0 for v in curve["loss"])
        assert curve["accuracy"][-1] == rec["finetuned_accuracy"] and curve["label"] == f"FALCON k={run}"


def test_sweep_runner_stop_and_failure(tmp_path):
    runner = SweepRunner(sweep_configs(tiny(epochs=50), convs=["falcon"], ranks=[1, 2, 3]), db=tmp_path / "r.sqlite")
    runner.start()
    while not runner.done and runner.snapshot()["latest"].get("phase") != "finetune":
        time.sleep(0.05)
    runner.stop()
    assert runner.wait(timeout=300)
    snap = runner.snapshot()
    assert snap["status"] == "stopped" and len(snap["results"]) <= 1
    failing = SweepRunner([tiny(model="vgg19-cifar")], store=False).start()
    assert failing.wait(timeout=120)
    assert failing.snapshot()["status"] == "failed" and "3-channel" in failing.snapshot()["error"]


# ----------------------------------------------------------------------------------------------
# data sets: offline behaviour, local copies
def test_unknown_dataset():
    with pytest.raises(FalconError, match="unknown dataset"):
        exp_data.load_dataset("mnist")


def test_download_off(tmp_path):
    with pytest.raises(FalconError, match="cifar-10-python.tar.gz"):
        exp_data.load_dataset("cifar10", tmp_path, download=False)


def _refuse_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused at once
    return port


def test_unreachable_download_fails_fast(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.CIFAR10, "url", f"http://127.0.0.1:{_refuse_port()}/cifar-10-python.tar.gz")
    with pytest.raises(FalconError, match=r"cannot be downloaded.*cifar-10-python.tar.gz.*--data-dir"):
        exp_data.load_dataset("cifar10", tmp_path / "data")


def test_hanging_network_is_cut_by_the_probe(tmp_path, monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(socket, "create_connection", hang)
    t0 = time.monotonic()
    with pytest.raises(FalconError, match="did not answer"):
        exp_data.load_dataset("cifar100", tmp_path, probe_timeout=0.2)
    assert time.monotonic() - t0 < 20  # not a timing assertion on speed: it must simply not wait for the hang


def test_failing_download_is_a_user_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(exp_data, "probe", lambda url, timeout=0: None)
    monkeypatch.setattr(tvu, "_urlretrieve", offline)
    with pytest.raises(FalconError, match=r"SVHN .*train_32x32.mat"):
        exp_data.load_dataset("svhn", tmp_path)


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """A local CIFAR-10 copy in torchvision's layout (random images; the checksum check is bypassed)."""
    import torchvision.datasets as tvd

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(exp_data, "probe", lambda *a, **k: pytest.fail("a local copy must not touch the network"))
    return tmp_path


def test_local_cifar10_copy_is_used(fake_cifar10):
    spec = exp_data.load_dataset("cifar10", fake_cifar10, limit_test=5)
    assert (len(spec.train), len(spec.test), spec.num_classes, spec.input_size) == (20, 5, 10, (3, 32, 32))
    x, y = spec.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10


def test_local_archive_is_extracted_without_network(tmp_path, monkeypatch):
    """cifar-10-python.tar.gz placed in --data-dir, not extracted, downloads off: it is used as it is."""
    import io
    import tarfile

    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.utils as tvu

    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        members = [(f"data_batch_{i}", {"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}) for i in range(1, 6)]
        members += [("test_batch", {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2]}),
                    ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})]
        for name, obj in members:
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: (tmp_path / "cifar-10-batches-py").is_dir())
    for module in (tv_cifar, tvu):
        monkeypatch.setattr(module, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tvu, "check_md5", lambda *a, **k: True)
    monkeypatch.setattr(exp_data, "probe", lambda *a, **k: pytest.fail("a local archive must not touch the network"))
    spec = exp_data.load_dataset("cifar10", tmp_path, download=False)
    assert (len(spec.train), len(spec.test)) == (10, 3)


def test_paper_model_needs_a_baseline_or_trains_one(fake_cifar10):
    cfg = ExperimentConfig(model="vgg19-cifar", dataset="cifar10", data_dir=str(fake_cifar10), conv="falcon",
                           epochs=1, batch_size=10)
    with pytest.raises(FalconError, match="--baseline PATH"):
        run_experiment(cfg, store=False)
    rec = run_experiment(dataclasses.replace(cfg, baseline_epochs=1), store=False)
    assert rec["status"] == "completed" and rec["params"] < rec["baseline_params"]
    assert rec["metrics"]["baseline_source"] == "trained here for 1 epochs"
    from falcon.sizing import size_model

    assert rec["baseline_params"] == size_model("vgg19-cifar", convention="clean").params


# ----------------------------------------------------------------------------------------------
# the CLI contract
def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=300)


def test_cli_experiment_and_results(tmp_path, capsys):
    db = str(tmp_path / "r.sqlite")
    out = cli("experiment", "--model", "digits-vgg", "--dataset", "digits", "--conv", "falcon", "--rank", "1",
              "--init", "svd", "--epochs", "1", "--lr", "0.005", "--seed", "1", "--limit-train", "64",
              "--limit-test", "32", "--latency-rounds", "1", "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    for key in ("run_id", "baseline_accuracy", "training_free_accuracy", "finetuned_accuracy", "params", "macs"):
        assert rec[key] is not None, key
    assert rec["lr"] == 0.005 and rec["seed"] == 1 and rec["init"] == "svd"
    lat = rec["metrics"]["latency"]  # measured at the end by default
    assert lat["status"] == "ok" and lat["runtime"] == "eager" and lat["rounds"] == 1 and lat["converted_ms"] > 0

    listed = cli("results", "--db", db, "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert isinstance(runs, list) and [r["run_id"] for r in runs] == [rec["run_id"]]

    from falcon.cli import main  # the rest in-process (each python -m start costs seconds here)

    assert main(["results", "--db", db]) == 0
    table = capsys.readouterr().out
    assert rec["run_id"] in table and "fine-tuned %" in table
    csv_path = tmp_path / "runs.csv"
    assert main(["results", "--db", db, "--csv", str(csv_path)]) == 0
    assert rec["run_id"] in csv_path.read_text() and "wrote 1 runs" in capsys.readouterr().out


def test_cli_user_errors_exit_2(tmp_path, capsys):
    from falcon.cli import main

    assert main(["experiment", "--conv", "mobilev2", "--init", "svd", "--db", str(tmp_path / "r.sqlite")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert main(["experiment", "--conv", "falcon", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download",
                 "--model", "vgg19-cifar", "--db", str(tmp_path / "r.sqlite")]) == 2
    assert "cifar-10-python.tar.gz" in capsys.readouterr().err
    assert main(["experiment", "--db", str(tmp_path / "r.sqlite")]) == 2  # no --conv, no --sweep
    assert "--conv" in capsys.readouterr().err
    assert main(["results", "--db", str(tmp_path / "none.sqlite")]) == 0
    assert "no runs" in capsys.readouterr().out


def test_cli_sweep_in_process(tmp_path, capsys):
    from falcon.cli import main

    db = str(tmp_path / "r.sqlite")
    assert main(["experiment", "--sweep", "--convs", "falcon,shuffle", "--ranks", "1", "--epochs", "1",
                 "--limit-train", "64", "--limit-test", "32", "--no-latency", "--db", db, "-q"]) == 0
    out = capsys.readouterr().out
    assert "shuffle" in out and "2 runs in" in out
    assert [r["conv"] for r in store.list_runs(db)] == ["falcon", "shuffle"]


def test_cpu_threads_is_restored():
    before = torch.get_num_threads()
    with pipeline.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(FalconError, match="threads"):
        ExperimentConfig(threads=0).resolved()


# ----------------------------------------------------------------------------------------------
# views of runs for the app (falcon.experiments.report)
def test_runs_frame_numbers_come_from_the_records():
    from falcon.experiments.report import RUN_COLUMNS, runs_frame

    recs = [{"run_id": "a", "conv": "falcon", "rank": 2, "hparams": {"rank": 2}, "init": "svd", "epochs": 3,
             "status": "completed", "params": 100, "macs": 1000, "baseline_params": 700, "baseline_macs": 9000,
             "baseline_accuracy": 0.99, "training_free_accuracy": 0.5, "finetuned_accuracy": 0.975, "seconds": 4.0},
            {"run_id": "b", "conv": "mobilev2", "rank": None, "hparams": {"expansion": 0.5}, "init": "random",
             "status": "stopped", "params": 50, "macs": 10, "baseline_params": 700, "baseline_macs": 9000,
             "baseline_accuracy": 0.99, "finetuned_accuracy": None}]
    df = runs_frame(recs)
    assert list(df.columns) == RUN_COLUMNS
    a, b = df.iloc[0], df.iloc[1]
    assert a["label"] == "FALCON k=2" and a["compression_rate"] == 7.0 and a["computation_reduction_rate"] == 9.0
    assert a["delta_points"] == pytest.approx(-1.5)
    assert b["label"] == "MobileConvV2 (t=0.5)" and pd_isna(b["rank"]) and pd_isna(b["delta_points"])


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


@pytest.mark.parametrize("sweep", [False, True])
def test_cli_command_reproduces_the_plan(sweep):
    """The command the page shows parses back (through the real CLI parser) into the same configs."""
    import shlex

    from falcon.cli import build_parser
    from falcon.cli.experiment import _config
    from falcon.experiments.report import cli_command, sweep_plan

    base = ExperimentConfig(epochs=2, optimizer="sgd", seed=7, threads=1)
    if sweep:
        plan = sweep_plan(["falcon", "dsconv", "shuffle"], [1, 3], base)
    else:
        plan = [dataclasses.replace(base, conv="falcon", hparams={"rank": 2}, init="gd").resolved()]
    argv = shlex.split(cli_command(plan, sweep))[3:]
    assert argv[0] == "experiment"
    args = build_parser("experiment").parse_args(argv)
    if sweep:
        again = sweep_configs(_config(args, "falcon"), args.convs, args.ranks)
    else:
        again = [_config(args, args.conv)]
    assert [c.resolved() for c in again] == plan


def test_sweep_plan_says_what_is_missing():
    from falcon.experiments.report import sweep_plan

    with pytest.raises(FalconError, match="at least one conv type"):
        sweep_plan([], [1])
    with pytest.raises(FalconError, match="at least one FALCON rank"):
        sweep_plan(["falcon"], [])
    with pytest.raises(FalconError, match="unknown conv type"):
        sweep_plan(["falcon", "nope"], [1])


@pytest.mark.parametrize("conv,hparams", [("falcon", {"rank": 2}), ("dsconv", {"rank": 1}), ("shuffle", {})])
def test_planned_cost_is_what_the_run_counts(tmp_path, conv, hparams):
    from falcon.experiments.report import planned_cost

    cfg = tiny(conv=conv, hparams=hparams)
    before = torch.random.get_rng_state()
    plan = planned_cost(cfg)
    assert torch.equal(before, torch.random.get_rng_state())
    rec = run_experiment(cfg, store=False)
    assert (plan["params"], plan["macs"]) == (rec["params"], rec["macs"])
    assert (plan["baseline_params"], plan["baseline_macs"]) == (rec["baseline_params"], rec["baseline_macs"])
    assert plan["clamped"] == (["features.0"] if conv == "falcon" else [])  # the 1-channel stem: full rank 1
