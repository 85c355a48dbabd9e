"""The README's Python example runs as written, and says what it claims."""
from __future__ import annotations

from conftest import REPO


def test_readme_python_example_runs():
    text = (REPO / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start:text.index("```", start)]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own documentation
    r, c, net, x = scope["r"], scope["c"], scope["net"], scope["x"]
    assert r.replaced == ["3", "6"]  # the stem stays
    assert [layer.name for layer in c.layers] == ["3", "6"] and all(layer.rank == 2 for layer in c.layers)
    assert c.model(x).shape == net(x).shape
