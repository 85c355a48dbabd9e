"""The registry owns the fit: outside the registry and the fit modules nothing switches on a conv type's name or
on an EHP's common axis, and the lists of ranked and fittable types are the registry's facts."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from falcon.convtypes import CONV_TYPES, FITTABLE, RANKED

ROOT = Path(__file__).resolve().parents[1]
#: Where a conv type's name or axis may be decided on: the registry, the fitters and the EHP's own math
#: (falcon.ehp and its numpy twin take the axis as an argument), and the blocks (which name their entry).
ALLOWED = {"falcon/convtypes.py", "falcon/ehp.py", "falcon/ehp_numpy.py", "falcon/blocks.py", "falcon/fits/"}
#: The baseline ("standard", the layer itself) is not a replacement: code may ask whether nothing is replaced.
NAMES = [n for n in CONV_TYPES if n != "standard"]


def _patterns(names: list[str]) -> list[re.Pattern]:
    alt = "|".join(re.escape(n) for n in names)
    quoted = rf"""["']({alt})["']"""
    return [
        re.compile(rf"(==|!=)\s*{quoted}"),  # conv == "falcon"
        re.compile(rf"{quoted}\s*(==|!=)"),  # "falcon" == conv
        re.compile(rf"""\bin\s*[\(\[\{{]\s*(["'][\w-]+["']\s*,\s*)*{quoted}"""),  # conv in ("mobilev2", "falcon")
        re.compile(r"\bfit_axis\b|\bconv_type_axis\s*\("),  # the old axis switch of the registry
        re.compile(r"""\baxis\b[^\n]*(==|!=)\s*["'](output|input)["']"""),  # axis == "output"
        re.compile(r"""\bFULL_RANK_FORMULA\s*\["""),  # formulas by axis
    ]


def switches(text: str, names: list[str]) -> list[str]:
    pats = _patterns(names)
    return [line.strip() for line in text.splitlines()
            if not line.lstrip().startswith("#") and any(p.search(line) for p in pats)]


def _sources():
    for folder in ("falcon", "app", "pages"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not any(rel == a or (a.endswith("/") and rel.startswith(a)) for a in ALLOWED):
                yield rel, path


def test_the_grep_finds_what_it_is_for():
    """The patterns catch the switches they must catch (so an empty result below means something)."""
    bad = ['if conv == "falcon":', "elif 'dsconv' != c:", 'if ct.name in ("falcon", "dsconv"):',
           "axis = ct.fit_axis", 'if axis == "output":', "a = conv_type_axis(conv)", 'FULL_RANK_FORMULA["input"]',
           'if c in ["tucker2"]:', 'ok = conv in ("mobilev2", "cp")']
    assert [switches(line, NAMES) for line in bad] == [[line] for line in bad]
    fine = ['counts = {"input": 1, "output": 2}', 'if conv == "standard":', 'x = CONV_TYPES["falcon"].color',
            '# conv == "falcon" in a comment', 'conv_type = "falcon"',
            'for s in (policy(entry, sites, t if t != KEEP else "falcon")):']
    assert [switches(line, NAMES) for line in fine] == [[] for _ in fine]


def test_nothing_outside_the_registry_and_the_fits_switches_on_conv_types():
    found = {rel: hits for rel, path in _sources() if (hits := switches(path.read_text(encoding="utf-8"), NAMES))}
    assert found == {}, "switches on conv-type names or fit axes outside the registry and the fit modules: " + repr(found)


def _block_classes() -> list[str]:
    """The names of the blocks of the conv types (other than the baseline), from falcon.blocks."""
    import inspect

    from falcon import blocks

    return [name for name, cls in vars(blocks).items()
            if inspect.isclass(cls) and getattr(cls, "conv_type", "") in NAMES]


def class_switches(text: str, classes: list[str]) -> list[str]:
    alt = "|".join(re.escape(c) for c in classes)
    pat = re.compile(rf"\bisinstance\([^\n]*\b({alt})\b")
    return [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#") and pat.search(line)]


def test_nothing_outside_the_registry_switches_on_block_classes():
    """``isinstance(m, (FalconConv, DSConv))`` is a switch on conv types too: the deployable form (falcon.export)
    and everything else ask the block's registry entry (``conv_type``) instead."""
    classes = _block_classes()
    assert {"FalconConv", "DSConv", "Tucker2Conv", "CPConv", "SpatialConv"} <= set(classes)
    assert class_switches("if isinstance(conv, (FalconConv, DSConv)):", classes)
    assert not class_switches("if isinstance(conv, nn.Conv2d):", classes)
    found = {rel: hits for rel, path in _sources() if (hits := class_switches(path.read_text(encoding="utf-8"), classes))}
    assert found == {}, "isinstance switches on conv-type block classes outside the registry: " + repr(found)
    assert "falcon/export.py" in {rel for rel, _ in _sources()} and "falcon/deploy.py" in {rel for rel, _ in _sources()}


def test_the_lists_are_the_registrys_facts():
    assert FITTABLE == tuple(n for n, c in CONV_TYPES.items() if c.fit is not None)
    assert RANKED == tuple(n for n, c in CONV_TYPES.items() if c.rank_names)
    assert {"tucker2", "cp", "spatial", "falcon", "dsconv"} <= set(FITTABLE)
    assert CONV_TYPES["tucker2"].rank_names == ("rank_in", "rank_out")


@pytest.mark.parametrize("conv", FITTABLE)
def test_every_fittable_entry_declares_its_fit(conv):
    """Fit, load, full rank and ranked hyper-parameters come from the entry; the fitter is the entry's."""
    import torch

    from falcon.fits import fitter_of
    from falcon.spec import LayerSpec

    ct = CONV_TYPES[conv]
    fitter = fitter_of(conv)
    assert fitter.conv_type == conv and fitter.methods
    assert set(ct.rank_names) <= {h.name for h in ct.hparams} and ct.fit.formula
    full = ct.full_ranks(6, 4, 3)
    assert set(full) == set(ct.rank_names) and all(v >= 1 for v in full.values())
    kernel = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    fit = fitter.fit(kernel, 2)
    block = ct.build(LayerSpec(4, 6, 3, 5), **fit.hparams).double()
    fitter.load(block, fit)
    torch.testing.assert_close(fitter.kernel_of(block), fit.kernel_hat)
