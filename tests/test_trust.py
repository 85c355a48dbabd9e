"""The trust boundary: code runs only when the user names it, never because a file, an upload or a stored run
names it. Each reader is fed files that name code which, if it ever ran, would create a canary file; the
canary must never appear, and each reader must refuse with one line."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from falcon.cli import main
from falcon.errors import FalconError

FORMAT = "falcon-explorer/converted-v1"


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """(canary path, [code specs that would create it]): a file.py:factory, an importable module:function, and a
    standard-library function (tempfile:mkdtemp) whose call we detect by patching it."""
    flag = tmp_path / "CANARY"
    code = textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(flag)!r}).write_text("ran")
        def build(num_classes=10):
            pathlib.Path({str(flag)!r}).write_text("called")
            raise SystemExit("the canary ran")
    """)
    (tmp_path / "evil_factory.py").write_text(code)
    (tmp_path / "evil_module_x.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("evil_module_x", None)
    import tempfile

    import falcon

    real_mkdtemp, ours = tempfile.mkdtemp, str(Path(falcon.__file__).parent)

    def mkdtemp(*a, **k):  # a callable anywhere on the machine (the example), when falcon's code calls it
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.startswith(ours):
                flag.write_text("tempfile.mkdtemp called by falcon")
                break
            frame = frame.f_back
        return real_mkdtemp(*a, **k)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    specs = [f"{tmp_path / 'evil_factory.py'}:build", "evil_module_x:build", "tempfile:mkdtemp"]
    return flag, specs


def converted_file(path, spec: str) -> str:
    torch.save({"format": FORMAT, "model": spec, "conv": "falcon", "rank": 1, "sites": [], "state_dict": {}}, path)
    return str(path)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


COMMANDS = [
    ["layers", "--model", "digits-vgg"],
    ["fit", "--model", "digits-vgg", "--layer", "features.3", "--rank", "1"],
    ["convert", "--model", "digits-vgg", "--conv", "falcon", "--rank", "1"],
    ["export", "--model", "digits-vgg", "--output", "{out}"],
    ["bench", "--model", "digits-vgg", "--conv", "falcon", "--rank", "1", "--rounds", "1", "-q"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_no_cli_reader_runs_code_a_converted_file_names(argv, canary, tmp_path, capsys):
    flag, specs = canary
    for i, spec in enumerate(specs):
        weights = converted_file(tmp_path / f"evil{i}.pt", spec)
        args = [a.replace("{out}", str(tmp_path / "out.onnx")) for a in argv] + ["--weights", weights]
        assert main(args) == 2
        line = one_error_line(capsys)
        assert "converted" in line and "digits-vgg" in line
        assert not flag.exists(), f"{argv[0]} ran code named by the file ({spec})"


def test_experiment_baseline_never_runs_code_a_file_names(canary, tmp_path, capsys):
    flag, specs = canary
    db = tmp_path / "runs.sqlite"
    for i, spec in enumerate(specs):
        baseline = converted_file(tmp_path / f"evil{i}.pt", spec)
        rc = main(["experiment", "--model", "digits-vgg", "--baseline", baseline, "--epochs", "1", "--db", str(db),
                   "--no-latency", "-q"])
        assert rc == 2
        one_error_line(capsys)
        assert not flag.exists()


def test_load_converted_refuses_code_it_names(canary, tmp_path):
    from falcon.conversion import load_converted
    from falcon.sources import load_model

    flag, specs = canary
    for i, spec in enumerate(specs):
        path = converted_file(tmp_path / f"evil{i}.pt", spec)
        with pytest.raises(FalconError, match="never makes this tool run"):
            load_converted(path)
        with pytest.raises(FalconError, match="not digits-vgg"):
            load_converted(path, model="digits-vgg")
        with pytest.raises(FalconError, match="not resnet18"):
            load_model("resnet18", path)
        assert not flag.exists()


def test_app_upload_and_app_model_choice_never_run_code(canary, tmp_path):
    from falcon.sources import load_for_app

    flag, specs = canary
    for i, spec in enumerate(specs):
        data = (tmp_path / f"evil{i}.pt")
        converted_file(data, spec)
        with pytest.raises(FalconError):
            load_for_app("checkpoint", "digits-vgg", data.read_bytes())
        with pytest.raises(FalconError, match="never makes this tool run"):  # a name from the URL or a widget
            load_for_app("checkpoint", spec, data.read_bytes())
        assert not flag.exists()


def test_stored_runs_never_run_the_code_they_name(canary, tmp_path, capsys):
    from falcon.experiments import store
    from falcon.experiments.backfill import measure_stored_runs

    flag, specs = canary
    db = tmp_path / "runs.sqlite"
    for spec in specs:
        store.save_run({"model": spec, "dataset": "digits", "conv": "falcon", "rank": 1, "finetuned_accuracy": 0.5,
                        "params": 10, "config": {"model": spec, "dataset": "digits", "conv": "falcon"}}, db)
    results = measure_stored_runs(db, rounds=1)
    assert [r["status"] for r in results] == ["failed"] * len(specs)
    assert all("never makes this tool run" in r["line"] for r in results)
    assert main(["experiment", "measure", "--db", str(db), "--latency-rounds", "1", "-q"]) == 1
    assert not flag.exists()
    # the user naming other code does not make a run's own code run either
    results = measure_stored_runs(db, rounds=1, model="digits-vgg")
    assert all(r["status"] == "failed" for r in results) and not flag.exists()


def test_a_converted_model_of_your_own_code_loads_when_you_name_it(tmp_path):
    """The other side of the rule: the user's own factory, named by the user, rebuilds the file it saved."""
    from falcon.conversion import convert_model, load_converted, save_converted
    from falcon.models import get_model_entry

    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        from torch import nn
        def build(num_classes=10):
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    """))
    spec = f"{tmp_path / 'mine.py'}:build"
    entry = get_model_entry(spec)  # the user names their code: it runs
    converted = convert_model(entry.build(10), "falcon", 1, input_size=(3, 16, 16), entry=entry)
    path = save_converted(converted, tmp_path / "small.pt")
    with pytest.raises(FalconError, match="never makes this tool run"):
        load_converted(path)
    loaded = load_converted(path, model=spec)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.model(x), converted.model.eval()(x))
    # the same file named through another relative path is the same model
    assert load_converted(path, model=f"{tmp_path}/./mine.py:build").entry.name.endswith(":build")


def test_app_upload_never_runs_code_through_apptest(canary, tmp_path, monkeypatch):
    """The EHP fit page's checkpoint upload, driven through AppTest: a code-naming converted file and a pickle
    that would run code are refused with st.error, and nothing runs."""
    import os
    import pickle

    from conftest import REPO
    from streamlit.testing.v1 import AppTest

    flag, specs = canary
    monkeypatch.setenv("FALCON_RESULTS_DB", str(tmp_path / "results.sqlite"))

    class Payload:  # unpickling this would call os.system: weights-only loading must refuse it
        def __reduce__(self):
            return (os.system, (f"touch {flag}",))

    pickled = tmp_path / "payload.pt"
    pickled.write_bytes(pickle.dumps({"state_dict": Payload()}))
    uploads = [converted_file(tmp_path / "evil0.pt", specs[0]), converted_file(tmp_path / "evil2.pt", specs[2]),
               str(pickled)]
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=60)
    at.query_params.update({"source": "checkpoint", "ckpt_model": "digits-vgg"})
    at.run()
    at.switch_page(str(REPO / "pages" / "ehp_fit.py")).run()
    assert not at.exception
    for path in uploads:
        at.file_uploader(key="ckpt_file").set_value(("model.pt", open(path, "rb").read(), "application/octet-stream"))
        at.run()
        assert not at.exception and at.error, path
        assert not flag.exists()


@pytest.mark.parametrize("meta, why", [
    ({"num_classes": 2**24}, "num_classes must be"),
    ({"sites": [{"name": "features.0", "rank": 1, "bias": False,
                 "spec": {"in_channels": 1, "out_channels": 2**20, "kernel_size": 3, "height": 32}}]},
     "out channels must be"),  # refused by limits' channel bound before any block is built
    ({"sites": [{"name": "features.0", "rank": 1, "bias": False,
                 "spec": {"in_channels": 16384, "out_channels": 16384, "kernel_size": 3, "height": 32}}]}, "would build"),
    ({"sites": [{"name": "x"}]}, "not a valid converted model"),
    ({"sites": [{"name": f"s{i}"} for i in range(10_001)]}, "replaced layers"),
])
def test_converted_metadata_cannot_ask_for_gigabytes(tmp_path, meta, why):
    """A converted file's metadata is checked on the meta device before anything is allocated."""
    import resource

    from falcon.conversion import load_converted

    path = tmp_path / "big.pt"
    torch.save({"format": FORMAT, "model": "digits-vgg", "conv": "falcon", "rank": 1, "sites": [], "state_dict": {},
                **meta}, path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FalconError, match=why):
        load_converted(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: under 200 MB more
