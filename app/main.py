"""FALCON Explorer: `streamlit run app/main.py` (from the repository root).

The navigation is built from the page registry in app/common.py (``PAGES``); every page lives in the
top-level ``pages/`` folder and is a thin layer over the ``falcon`` library.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):  # app/ for `common`, the repo root for `falcon` without an install
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import streamlit as st  # noqa: E402

import common  # noqa: E402

# A local favicon: a material icon (ours or a page's) would be fetched from fonts.gstatic.com.
st.set_page_config(page_title="FALCON Explorer", page_icon=common.favicon(), layout="wide")

#: Every page's layout at narrow widths, in one place: a 1024×768 projector at 150% is 683×512 CSS px, a small
#: window 800×600. Nothing may scroll the page sideways: columns wrap to a new row below ~8 rem each, option
#: groups (segmented controls) wrap instead of scrolling, wide tables scroll inside themselves, the sidebar
#: narrows, numbers and labels wrap instead of ending in "…". tests/test_browser_layout.py checks each page.
LAYOUT_CSS = """<style>
[data-testid="stHorizontalBlock"] { flex-wrap: wrap; row-gap: 0.5rem; }
[data-testid="stColumn"] { min-width: min(100%, 8rem); }
[data-testid="stButtonGroup"] [role="radiogroup"] { flex-wrap: wrap; overflow: visible; }
[data-testid="stMetricValue"] > div, [data-testid="stMetricDelta"] p,
[data-testid="stCheckbox"] label p, [data-testid="stWidgetLabel"] p, [data-testid="stMetricLabel"] p,
[data-testid="stMetricLabel"] div, [data-testid="stMain"] button p,
[data-testid="stMain"] button div { white-space: normal; overflow: visible; text-overflow: clip;
  overflow-wrap: anywhere; }
[data-testid="stMultiSelectTagsContainer"] { flex-wrap: wrap; overflow: visible; height: auto; min-width: 0; }
[data-testid="stMultiSelect"] div:has(> [data-testid="stMultiSelectTagsContainer"]),
[data-testid="stMultiSelect"] div:has(> div > [data-testid="stMultiSelectTagsContainer"]) { height: auto;
  max-height: none; }
[data-testid="stMultiSelectTagsContainer"] [role="group"] span { height: auto; white-space: normal;
  overflow: visible; text-overflow: clip; overflow-wrap: anywhere; }
[data-testid="stMarkdownContainer"] .katex-display { overflow-x: auto; overflow-y: hidden; padding: 0 4px; }
[data-testid="stMarkdownContainer"]:has(> table), [data-testid="stMarkdownContainer"]:has(svg.falcon-chart) {
  overflow-x: auto; }
[data-testid="stDataFrame"] { max-width: 100%; }
[class*="st-key-wide"] [data-testid="stColumn"] { min-width: min(100%, 30rem); }
@media (max-width: 1000px) {
  [data-testid="stSidebar"][aria-expanded="true"], [data-testid="stSidebar"] { width: 15rem !important;
    min-width: 15rem !important; }
  [data-testid="stMetricValue"] { font-size: 1.6rem; }
  [data-testid="stMainBlockContainer"] { padding-left: 1rem; padding-right: 1rem; }
}
</style>"""

#: Presenter mode (the sidebar switch): larger type everywhere (rem-based sizes follow the root font), so fewer
#: columns fit a row; charts scale their fonts in common.plot.
PRESENTER_CSS = """<style>
html { font-size: 20px; }
[data-testid="stColumn"] { min-width: min(100%, 12rem); }
svg.falcon-chart { zoom: 1.3; }
</style>"""

# The default page is served at "/" (Streamlit gives it the URL path ""), so "/overview" would be "Page not found":
# the same page also answers there, hidden from the menu (its registry url_path is reserved for that alias).
# Any other unknown path runs the default page too, with Streamlit's "Page not found" notice.
pages = [st.Page(p.path, title=p.title, icon=p.icon, url_path=f"{p.url_path}-home" if p.default else p.url_path,
                 default=p.default) for p in common.PAGES]
pages += [st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url_path, visibility="hidden")
          for p in common.PAGES if p.default]
page = st.navigation(pages)
st.html(LAYOUT_CSS)
if common.widget(st.sidebar.toggle, "Presenter mode", value=False, key=common.Keys.PRESENTER,
                 help="for a projector: larger type, fewer columns, larger chart text; kept in the link"):
    st.html(PRESENTER_CSS)
device_slot = st.sidebar.container()  # filled after the page: the device needs torch, the first page does not
try:
    page.run()
finally:
    common.sidebar(device_slot)
