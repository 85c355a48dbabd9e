"""Every page at the sizes a classroom shows it (issue #20 item 3), in Debian's chromium through Playwright:

* ``projector``: 683×512 CSS px at device scale 1.5 (a 1024×768 projector at 150%),
* ``small``: an 800×600 window,
* ``presenter``: the projector size with the sidebar's presenter mode on (``?presenter=true``),
* ``wide``: 1400×900, for the screenshots of the pages at their usual size.

Each page must not scroll sideways, must show every option of its radios and segmented controls, and of its
select boxes when opened, inside the viewport, must keep table cells' content inside the cell, must not cut a
number or label to "…", and must draw its chart text at 12 px or more. Screenshots of each page at each size go
to test-artifacts/screens/ (look at them). Run one page and size while working:
``pytest tests/test_browser_layout.py -k "sizing and projector"``.
"""
from __future__ import annotations

import time

import pytest

import test_browser as tb  # the server and browser fixtures, the page registry, wait_done
from test_browser import ARTIFACTS, common, wait_done

pytestmark = pytest.mark.browser
server, browser = tb.server, tb.browser  # fixtures, shared with test_browser.py (one server per module)

SCREENS = ARTIFACTS / "screens"
SIZES = {
    "projector": dict(viewport={"width": 683, "height": 512}, device_scale_factor=1.5),
    "small": dict(viewport={"width": 800, "height": 600}, device_scale_factor=1),
    "presenter": dict(viewport={"width": 683, "height": 512}, device_scale_factor=1.5),
    "wide": dict(viewport={"width": 1400, "height": 900}, device_scale_factor=1),
}
MIN_CHART_PX = 12

# ---------------------------------------------------------------------------------------------- what is measured
OVERFLOW = """() => {
  const main = document.querySelector("[data-testid='stMain']");
  return {page: document.scrollingElement.scrollWidth, width: innerWidth,
          main: main.scrollWidth, mainWidth: main.clientWidth}; }"""

#: options of radios and segmented controls (role=radio) outside the viewport or hidden (clipped or covered)
HIDDEN_OPTIONS = """() => {
  const out = [];
  for (const el of document.querySelectorAll("[data-testid='stMain'] [role='radio']")) {
    el.scrollIntoView({block: 'center', inline: 'nearest'});
    const r = el.getBoundingClientRect();
    const x = r.left + r.width / 2, y = r.top + r.height / 2;
    const top = document.elementFromPoint(x, y);
    const inside = r.left >= -0.5 && r.right <= innerWidth + 0.5 && r.width > 0;
    if (!inside || !top || !(el === top || el.contains(top) || top.contains(el)))
      out.push(`${el.innerText || el.getAttribute('aria-label')} at ${Math.round(r.left)}..${Math.round(r.right)}`);
  }
  return out; }"""

#: option groups and chosen options (segmented controls, multiselect chips) that scroll sideways, hiding some
SCROLLED_OPTIONS = """() => [...document.querySelectorAll(
    "[data-testid='stMain'] [role='radiogroup'], [data-testid='stMain'] [data-testid='stMultiSelectTagsContainer']")]
  .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText.replace(/\\s+/g, ' ').slice(0, 60))"""

#: displayed formulas cut at the right (the overview's lost their D term at 1024 px)
CUT_FORMULAS = """() => [...document.querySelectorAll("[data-testid='stMain'] .katex-display")]
  .filter(e => e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().right > innerWidth + 0.5)
  .map(e => e.innerText.replace(/\\s+/g, ' ').slice(0, 40))"""

#: table cells whose content spills out of the cell (formulas drawn over their neighbours)
SPILLING_CELLS = """() => {
  const out = [];
  for (const cell of document.querySelectorAll("[data-testid='stMain'] td, [data-testid='stMain'] th")) {
    const c = cell.getBoundingClientRect();
    for (const part of cell.querySelectorAll('.katex, span, b, strong, small')) {
      const r = part.getBoundingClientRect();
      if (r.width && (r.left < c.left - 1 || r.right > c.right + 1))
        out.push(`${cell.innerText.slice(0, 40)}: ${Math.round(r.left)}..${Math.round(r.right)} outside ` +
                 `${Math.round(c.left)}..${Math.round(c.right)}`);
    }
  }
  return out; }"""

#: text cut short with an ellipsis (numbers, labels, chips, buttons)
TRUNCATED = """() => {
  const out = [];
  for (const el of document.querySelectorAll("[data-testid='stMain'] *")) {
    if (!el.childNodes.length || el.scrollWidth <= el.clientWidth + 1) continue;
    const s = getComputedStyle(el);
    if (s.textOverflow === 'ellipsis' && s.overflowX !== 'visible' && el.innerText.trim())
      out.push(el.innerText.trim().slice(0, 60));
  }
  return out; }"""

#: text that reaches out of its column (drawn over the neighbour or cut at the column's edge), outside of anything
#: that scrolls sideways by design (wide tables, code)
OUT_OF_COLUMN = """() => {
  const out = [];
  for (const col of document.querySelectorAll("[data-testid='stMain'] [data-testid='stColumn']")) {
    const c = col.getBoundingClientRect();
    for (const el of col.querySelectorAll('*')) {
      if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
      const r = el.getBoundingClientRect();
      if (!r.width || (r.left >= c.left - 1 && r.right <= c.right + 1)) continue;
      let e = el.parentElement, scrolls = false;
      for (; e && e !== col; e = e.parentElement)
        if (['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) { scrolls = true; break; }
      if (!scrolls) out.push(`${el.textContent.trim().slice(0, 40)}: ${Math.round(r.left)}..${Math.round(r.right)} ` +
                             `outside ${Math.round(c.left)}..${Math.round(c.right)}`);
    }
  }
  return out; }"""

#: chart text (plotly's SVG and the calculator's inline SVG) drawn smaller than `min` CSS px
SMALL_CHART_TEXT = """(min) => {
  const out = [];
  for (const t of document.querySelectorAll(".main-svg text, svg.falcon-chart text")) {
    const r = t.getBoundingClientRect();
    if (!t.textContent.trim() || !r.width || t.closest('.hoverlayer, .modebar')) continue;
    const m = t.getScreenCTM();
    const px = parseFloat(getComputedStyle(t).fontSize) * (m ? Math.hypot(m.a, m.b) : 1);
    if (px < min - 0.25) out.push(`${t.textContent.trim().slice(0, 30)}: ${px.toFixed(1)} px`);
  }
  return out; }"""

#: plotly annotations (panel titles, labels) that overlap another one in the same chart
COLLIDING_ANNOTATIONS = """() => {
  const out = [];
  for (const chart of document.querySelectorAll(".main-svg")) {
    const boxes = [...chart.querySelectorAll("g.annotation-text-g text")].filter(t => t.textContent.trim())
      .map(t => [t.textContent.trim(), t.getBoundingClientRect()]);
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const [a, p] = boxes[i], [b, q] = boxes[j];
      if (p.left < q.right - 1 && q.left < p.right - 1 && p.top < q.bottom - 1 && q.top < p.bottom - 1)
        out.push(`${a.slice(0, 30)} / ${b.slice(0, 30)}`);
    }
  }
  return out; }"""

#: plotly points drawn (partly) outside their chart
CLIPPED_POINTS = """() => {
  const out = [];
  for (const chart of document.querySelectorAll("[data-testid='stPlotlyChart'] .main-svg:first-of-type")) {
    const c = chart.getBoundingClientRect();
    for (const p of chart.querySelectorAll("path.point")) {
      const r = p.getBoundingClientRect();
      if (r.width && (r.left < c.left - 0.5 || r.right > c.right + 0.5 || r.top < c.top - 0.5 || r.bottom > c.bottom + 0.5))
        out.push(`${Math.round(r.left)},${Math.round(r.top)}`);
    }
  }
  return out; }"""

#: per cartesian subplot with a visible x axis: how many x tick labels it shows
X_TICKS = """() => [...document.querySelectorAll(".main-svg .cartesianlayer .subplot")].map(s => {
  const x = s.getAttribute('class').split(' ')[1].split('y')[0];  // "subplot x2y2" -> "x2" (ticks: g.x2tick)
  return s.querySelectorAll(`.xaxislayer-above .${x}tick text`).length; })"""


def open_page(browser, server: str, page_def, size: str):
    context = browser.new_context(**SIZES[size])
    page = context.new_page()
    page.set_default_timeout(90_000)
    query = "?presenter=true" if size == "presenter" else ""
    page.goto(f"{server}/{'' if page_def.default else page_def.url_path}{query}")
    wait_done(page, 90_000)
    page.wait_for_function("""() => [...document.querySelectorAll("[data-testid='stPlotlyChart']")]
                                      .every(c => c.querySelector('.main-svg'))""")
    time.sleep(0.8)  # plotly's second layout pass (legends, automargins)
    return context, page


def select_options_outside(page) -> list[str]:
    """Open each select box and multiselect: every option it lists must lie inside the viewport."""
    out = []
    boxes = page.locator("[data-testid='stMain'] [data-testid='stSelectbox'], "
                         "[data-testid='stMain'] [data-testid='stMultiSelect']")
    for i in range(boxes.count()):
        box = boxes.nth(i)
        if box.locator("input[disabled], [aria-disabled='true']").count():
            continue
        box.scroll_into_view_if_needed()
        box.locator("input").first.click()
        try:
            page.wait_for_selector("[role='listbox'] [role='option']", timeout=5_000)
        except tb.sync_api.TimeoutError:
            page.keyboard.press("Escape")
            continue  # a multiselect with every option chosen lists none
        time.sleep(0.4)  # the popover places itself (above or below the box, as the room allows)
        out += [f"{box.inner_text().splitlines()[0]}: {o}" for o in page.evaluate(
            """() => { // the dropdown (it scrolls its options) inside the viewport; each option inside it sideways
                 const drop = document.querySelector("[role='listbox']").parentElement.getBoundingClientRect();
                 const out = (drop.top < -0.5 || drop.bottom > innerHeight + 0.5) ? ['the list, vertically'] : [];
                 return out.concat([...document.querySelectorAll("[role='listbox'] [role='option']")].filter(o => {
                   const r = o.getBoundingClientRect();
                   return r.width && (r.left < -0.5 || r.right > innerWidth + 0.5);
                 }).map(o => o.innerText.slice(0, 40))); }""")]
        page.keyboard.press("Escape")
        page.wait_for_selector("[role='listbox']", state="detached", timeout=5_000)
    return out


def screenshot(page, name: str) -> None:
    """The whole page (Streamlit scrolls inside stMain: the viewport is stretched to its height)."""
    SCREENS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollTo(0, 0)")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height) + 40, 12000))})
    time.sleep(0.8)  # plotly redraws at the new size
    page.screenshot(path=str(SCREENS / f"{name}.png"))
    page.set_viewport_size(size)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("page_def", common.PAGES, ids=[p.url_path for p in common.PAGES])
def test_page_fits_the_window(server, browser, page_def, size):
    context, page = open_page(browser, server, page_def, size)
    try:
        assert not page.locator("[data-testid='stException']").count()
        width = page.evaluate(OVERFLOW)
        assert width["page"] <= width["width"] and width["main"] <= width["mainWidth"], width
        assert page.evaluate(HIDDEN_OPTIONS) == []
        assert page.evaluate(SCROLLED_OPTIONS) == []
        assert page.evaluate(SPILLING_CELLS) == []
        assert page.evaluate(CUT_FORMULAS) == []
        assert page.evaluate(TRUNCATED) == []
        assert page.evaluate(OUT_OF_COLUMN) == []
        assert page.evaluate(SMALL_CHART_TEXT, MIN_CHART_PX) == []
        assert page.evaluate(COLLIDING_ANNOTATIONS) == []
        assert page.evaluate(CLIPPED_POINTS) == []
        if page_def.file == "accuracy.py":  # every panel keeps x ticks (vgg16_bn's 125-138 M had none)
            assert min(page.evaluate(X_TICKS)) >= 2
        assert select_options_outside(page) == []
        screenshot(page, f"{size}-{common.PAGES.index(page_def) + 1:02d}-{page_def.url_path}")
    except Exception:
        screenshot(page, f"failed-{size}-{page_def.url_path}")
        raise
    finally:
        context.close()
