"""Functions a reader can hold in their head (#21): in the library (falcon/), no function is longer than
:data:`MAX_LINES` lines, and none is more complex than ruff's C901 allows (McCabe complexity 15: pyproject.toml's
``[tool.ruff.lint.mccabe]``). Each failure lists every offender, with its file and line."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60


def long_functions(package: Path, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` for every function or method under ``package`` longer than ``limit`` lines
    (from its ``def`` line to its last, docstring and signature included; paths relative to ``package``'s parent)."""
    out = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_the_length_check_finds_a_long_method_and_only_it(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES - 1))  # with its def: 60 lines, allowed
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    return 1\n\n\nclass C:\n    def fits(self):\n{body}\n\n"
                                           f"    async def long(self):\n{body}\n        return 0\n")
    assert long_functions(tmp_path / "pkg") == [f"pkg/m.py:{MAX_LINES + 7} long ({MAX_LINES + 1} lines)"]


def test_no_function_in_falcon_is_longer_than_60_lines():
    offenders = long_functions(ROOT / "falcon")
    assert not offenders, (f"{len(offenders)} function(s) in falcon/ longer than {MAX_LINES} lines (split them):\n"
                           + "\n".join(offenders))


def test_no_function_in_falcon_is_too_complex():
    pytest.importorskip("ruff")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "falcon", "--select", "C901", "--no-cache",
                           "--output-format", "concise"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    offenders = [line for line in done.stdout.splitlines() if "C901" in line]
    assert done.returncode == 0 and not offenders, (
        "functions in falcon/ above McCabe complexity 15 (pyproject.toml [tool.ruff.lint.mccabe]; split them):\n"
        + "\n".join(offenders or [done.stdout, done.stderr]))
