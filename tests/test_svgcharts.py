"""The calculator's SVG charts: well-formed SVG that draws the library's numbers in the registry colours."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from falcon.views import svgcharts
from falcon import costs
from falcon.convtypes import CONV_TYPES, RANKED, break_even_rank, compare
from falcon.spec import LayerSpec

NS = {"s": "http://www.w3.org/2000/svg"}
SPECS = [LayerSpec(256, 256, 3, 32), LayerSpec(3, 64, 7, 224, stride=2), LayerSpec(512, 128, 1, 7),
         LayerSpec(16384, 16384, 15, 4096)]


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on malformed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("role") == "img" and root.get("aria-label")
    return root


def rows_for(spec):
    return [r for r in costs.layer_rows(spec, keep_going=True) if "error" not in r]  # as the page does


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_reductions_bars_are_the_library_rates_to_scale(spec):
    rows = rows_for(spec)
    root = parse(svgcharts.reductions_svg(rows))
    bars = root.findall(".//s:rect[@class='bar']", NS)
    drawn = {(b.get("data-conv"), b.get("data-rate")): b for b in bars}
    convs = [r["conv"] for r in rows if r["conv"] != "standard"]
    assert len(bars) == 2 * len(convs) and {c for c, _ in drawn} == set(convs)
    x0 = {float(b.get("x")) for b in bars}
    assert len(x0) == 1  # every bar starts at 0×
    per_unit = []
    for conv in convs:
        c = compare(spec, conv)  # the rows are at the registry's default hyper-parameters
        for rate, value in (("CR", c.compression_rate), ("CRR", c.computation_reduction_rate)):
            bar = drawn[(conv, rate)]
            assert float(bar.get("data-value")) == value
            assert bar.get("fill") == CONV_TYPES[conv].color
            assert f"{value:.3f}×" in bar.find("s:title", NS).text
            if value > 0.5:
                per_unit.append(float(bar.get("width")) / value)
    assert max(per_unit) == pytest.approx(min(per_unit), rel=0.01, abs=0.1)  # one scale for every bar
    one = root.find(".//s:line[@class='one']", NS)
    assert float(one.get("x1")) == pytest.approx(next(iter(x0)) + per_unit[0], abs=0.2)  # the 1× line


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_rank_sweep_lines_and_break_even(spec):
    sweeps, be = costs.rank_chart(spec)
    assert set(be) == set(RANKED) and {"falcon", "dsconv"} <= set(sweeps)  # every type listed, the cheap ones drawn
    assert all(be[c] == {"params": break_even_rank(spec, c, "params"), "macs": break_even_rank(spec, c, "macs")}
               for c in RANKED)
    assert all(max(be[c].values()) > costs.RANK_CHART_MAX for c in set(be) - set(sweeps))
    root = parse(svgcharts.rank_sweep_svg(sweeps, be))
    lines = root.findall(".//s:polyline[@class='line']", NS)
    assert {(p.get("data-conv"), p.get("data-what")) for p in lines} == {
        (c, w) for c in sweeps for w in ("params", "MACs")}
    for p in lines:
        assert p.get("stroke") == CONV_TYPES[p.get("data-conv")].color
        assert len(p.get("points").split()) == len(sweeps[p.get("data-conv")])
        assert (p.get("stroke-dasharray") is not None) == (p.get("data-what") == "MACs")  # MACs dotted
    marks = root.findall(".//s:line[@class='break-even']", NS)
    assert {m.get("data-conv"): int(m.get("data-k")) for m in marks} == {c: be[c]["params"] for c in sweeps}
    # a point's height follows its value on the log axis: the 1× line sits where CR crosses 1
    one_y = float(root.find(".//s:line[@class='one']", NS).get("y1"))
    for p in lines:
        conv, what = p.get("data-conv"), p.get("data-what")
        key = "compression_rate" if what == "params" else "computation_reduction_rate"
        for (x, y), v in zip((map(float, pt.split(",")) for pt in p.get("points").split()), sweeps[conv][key]):
            assert (y < one_y) == (v > 1) or v == pytest.approx(1)


def test_labels_are_escaped_and_ticks_are_nice():
    rows = [{"conv": "falcon", "label": "<b>FALCON</b> & co", "compression_rate": 3.0, "computation_reduction_rate": 2.0}]
    svg = svgcharts.reductions_svg(rows)
    parse(svg)
    assert "<b>" not in svg and "&lt;b&gt;FALCON&lt;/b&gt; &amp; co" in svg
    assert svgcharts.nice_ticks(8.69) == [0, 2, 4, 6, 8, 10]
    assert svgcharts.nice_ticks(34.8) == [0, 10, 20, 30, 40]
    assert svgcharts.log_ticks(0.7, 9) == [1, 2, 5]
    assert svgcharts.log_ticks(0.04, 1.2) == [0.05, 0.1, 0.2, 0.5, 1]
