"""Properties of the library as a whole (every module of falcon/)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO

# In a fresh interpreter: import every module of the package (new ones included, found by walking it),
# noting the first one after whose import streamlit is loaded. falcon.__main__ is the entry point: importing
# it runs the CLI (its only import, falcon.cli, is walked anyway).
IMPORT_ALL = textwrap.dedent("""
    import importlib, pkgutil, sys
    import falcon

    def failed(name):
        raise ImportError(f"cannot import {name}")

    names = ["falcon"] + [m.name for m in pkgutil.walk_packages(falcon.__path__, "falcon.", onerror=failed)]
    culprit = None
    for name in names:
        if name.endswith(".__main__"):  # a command's entry point runs it when imported
            continue
        importlib.import_module(name)
        if culprit is None and "streamlit" in sys.modules:
            culprit = name
    print(len(names), culprit or "")
""")


def test_no_library_module_imports_streamlit():
    """The library serves the CLI and scripts as well as the app: no module of falcon/ may pull in streamlit."""
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    count, _, culprit = out.stdout.strip().partition(" ")
    assert int(count) > 30  # the walk found the package's modules (subpackages included)
    assert culprit == "", f"importing {culprit} loads streamlit"


def test_falcon_has_no_import_cycle():
    """Every import of falcon/ (top-level and inside functions) forms no cycle (scripts/import_cycles.py)."""
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run([sys.executable, str(REPO / "scripts" / "import_cycles.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
