"""A plain (non-editable) install works on its own: the package data ships in the wheel (#19 item 5).

The checkout is copied to a temporary folder and installed with pip, NOT editable, into a fresh venv; then,
from another temporary folder, the venv's interpreter loads the paper's results, converts the bundled
digits model and evaluates it, and runs ``python -m falcon size``. The numbers must equal the checkout's.

The venv is made without system site-packages; a ``.pth`` file of plain paths lets it see the running
interpreter's import path less the checkout (torch etc. are not downloaded again). Plain paths in a ``.pth``
do not run the ``.pth`` files of those folders, so the checkout's editable-install finder never runs there
and cannot stand in for anything the installed copy lacks; the test also checks that every ``falcon``
module came from the venv.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

#: what an untracked checkout (no git) leaves out of the copy that is installed
SKIP = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "artifacts",
                              "test-artifacts", ".pytest_cache", "*.sqlite", "*.db")
DATA_FILES = ("paper_results.csv", "paper_results.md", "digits.npz", "digits_vgg.pt", "DIGITS.md")
RANK = 4  # rank 1 leaves digits-vgg at chance (10%); rank 4 keeps 400 of 450 digits, a number worth comparing


def probe() -> dict:
    """What the test compares: run in the venv (source sent to a fresh interpreter) and in the checkout."""
    import torch

    import falcon
    from falcon.data import DATA_DIR
    from falcon.datasets import load_digits
    from falcon.models.digits import digits_vgg, evaluate_accuracy
    from falcon.paper import load_paper_results

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same summation order in both interpreters
    try:
        model, test = digits_vgg(pretrained=True), load_digits("test")
        converted = falcon.convert(model, rank=RANK, input_size=(1, 32, 32))
        accuracy = [evaluate_accuracy(model, test), evaluate_accuracy(converted.model, test)]
    finally:
        torch.set_num_threads(threads)
    modules = {m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "falcon" and getattr(m, "__file__", None)}
    return {"falcon": falcon.__file__, "data_dir": str(DATA_DIR), "modules": sorted(modules), "sys_path": sys.path,
            "paper_csv": load_paper_results().to_csv(index=False), "n_test": len(test), "accuracy": accuracy,
            "layers": [(layer.name, layer.rank, layer.relative_error) for layer in converted.layers]}


def copy_source(dest: Path) -> Path:
    """The checkout's files (git's tracked and untracked-but-not-ignored ones), so pip builds outside it."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return Path(shutil.copytree(REPO, dest, ignore=SKIP))
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # --cached also lists files deleted in the work tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def outside_checkout(paths) -> list[str]:
    return [p for p in paths if p and not Path(p).resolve().is_relative_to(REPO)]


def make_venv(env: Path) -> tuple[Path, Path]:
    """A venv that sees this interpreter's import path, less the checkout, as plain paths; its python and
    its site-packages."""
    venv.create(env, with_pip=False, symlinks=os.name != "nt")
    python = env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    dirs = outside_checkout(d for d in sys.path if d and Path(d).is_dir())
    (purelib / "_outer_site_packages.pth").write_text("".join(d + "\n" for d in dirs))
    return python, purelib


def run(*argv, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``argv`` with a clean environment (no PYTHONPATH, no pip config), failing with its output shown."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, site-packages, an unrelated working directory) of a venv holding a non-editable install."""
    tmp = tmp_path_factory.mktemp("installed")
    python, purelib = make_venv(tmp / "venv")
    source = copy_source(tmp / "source")
    run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--ignore-installed",
        "--disable-pip-version-check", "-q", source, cwd=tmp)
    shutil.rmtree(source)  # nothing of the source tree can be read afterwards
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return python, purelib, elsewhere


def test_the_install_is_a_real_copy_with_its_data(installed):
    python, purelib, _ = installed
    package = purelib / "falcon"
    assert (package / "__init__.py").is_file() and (package / "cli" / "__init__.py").is_file()
    for name in DATA_FILES:
        assert (package / "data" / name).read_bytes() == (REPO / "falcon" / "data" / name).read_bytes(), name
    assert not list(purelib.glob("__editable__*")), "an editable install"
    (direct_url,) = purelib.glob("falcon_explorer-*.dist-info/direct_url.json")
    assert not json.loads(direct_url.read_text()).get("dir_info", {}).get("editable", False)


def test_the_installed_copy_loads_the_paper_and_converts_digits_like_the_checkout(installed):
    python, purelib, elsewhere = installed
    code = inspect.getsource(probe) + f"\nRANK = {RANK}\nimport json, sys\nprint(json.dumps(probe()))\n"
    got = json.loads(run(python, "-I", "-c", code, cwd=elsewhere).stdout)
    site_dir = purelib.resolve()
    assert Path(got["falcon"]).resolve() == site_dir / "falcon" / "__init__.py"
    assert Path(got["data_dir"]).resolve() == site_dir / "falcon" / "data"
    assert got["modules"] and all(Path(f).resolve().is_relative_to(site_dir) for f in got["modules"])
    assert outside_checkout(got["sys_path"]) == [p for p in got["sys_path"] if p]
    want = probe()  # the checkout's own numbers (pytest runs the checkout's falcon)
    assert Path(want["falcon"]).resolve().is_relative_to(REPO)
    assert got["paper_csv"] == want["paper_csv"] and got["paper_csv"].count("\n") == 57  # header + 56 rows
    assert got["n_test"] == want["n_test"] == 450
    assert got["accuracy"] == want["accuracy"]
    assert got["accuracy"][0] > 0.97 and 0.5 < got["accuracy"][1] < got["accuracy"][0]
    assert [name for name, *_ in got["layers"]] == [name for name, *_ in want["layers"]]
    for (_, rank, err), (_, rank_want, err_want) in zip(got["layers"], want["layers"]):
        assert rank == rank_want == RANK and err == pytest.approx(err_want, rel=1e-6)


def test_the_installed_cli_sizes_the_bundled_model(installed):
    python, _, elsewhere = installed
    argv = ("size", "--model", "digits-vgg", "--conv", "falcon", "--rank", "1")
    got = run(python, "-I", "-m", "falcon", *argv, cwd=elsewhere).stdout
    want = run(sys.executable, "-m", "falcon", *argv, cwd=REPO).stdout
    assert got == want
    assert "params          20,106   standard         135,674" in got
