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

pages = [st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url_path, default=p.default) for p in common.PAGES]
page = st.navigation(pages)
device_slot = st.sidebar.container()  # filled after the page: the device needs torch, the first page does not
try:
    page.run()
finally:
    common.sidebar(device_slot)
