"""Links in a real browser (issue #20 item 5): a page's state round-trips through its URL (a shared link shows the
same view in a new browser), a layer chosen on Model sizing opens on the EHP fit page and back, and paths the app
does not have still show the overview. Debian's chromium through Playwright, as tests/test_browser.py."""
from __future__ import annotations

import json
import time

import pytest

import test_browser as tb
from test_browser import rerun_after, text_js, wait_done

pytestmark = pytest.mark.browser
server, browser = tb.server, tb.browser


def fresh(browser, url: str):
    """``url`` in a new browser context (no session, no cookies: what someone the link was sent to sees)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.goto(url)
    wait_done(page, 90_000)
    return context, page


def shows(text: str) -> str:
    return f"() => document.body.innerText.includes({json.dumps(text)})"


def checked(page, name: str) -> bool:
    return page.get_by_role("radio", name=name, exact=True).first.get_attribute("aria-checked") == "true"


def test_unknown_paths_show_the_overview(server, browser):
    context, page = fresh(browser, f"{server}/overview")
    assert page.locator("h1").first.inner_text().startswith("FALCON Explorer")
    assert page.get_by_text("Page not found").count() == 0 and page.url.endswith("/overview")
    page.goto(f"{server}/no-such-page")
    wait_done(page)
    assert page.locator("h1").first.inner_text().startswith("FALCON Explorer")  # with Streamlit's notice
    context.close()


def test_sizing_state_round_trips_through_its_url(server, browser):
    context, page = fresh(browser, f"{server}/sizing?model=digits-vgg")
    rerun_after(page, page.get_by_role("radio", name="parameters", exact=True).click, text_js("Click a bar"))
    rerun_after(page, page.get_by_text("show every module (BN, activations, pooling)").click)
    box = tb.number_input(page, "target (× fewer)")
    box.fill("8")
    rerun_after(page, lambda: box.press("Enter"), text_js("8× fewer"))
    # a layer chosen by clicking its bar in the per-layer chart: the tick label's column, low in the plot
    chart = page.get_by_test_id("stPlotlyChart").filter(has_text="standard model").first
    chart.scroll_into_view_if_needed()
    x, y = chart.locator(".js-plotly-plot").evaluate("""p => { const xa = p._fullLayout.xaxis, ya = p._fullLayout.yaxis;
        const r = p.getBoundingClientRect();  // the bar's column, just above the axis (inside the bar)
        return [r.left + xa._offset + xa.d2p('features.7'), r.top + ya._offset + ya._length - 2]; }""")
    rerun_after(page, lambda: page.mouse.click(x, y), text_js("Chosen layer: features.7"))
    url = page.url
    assert all(part in url for part in ("model=digits-vgg", "chart=params", "all_layers=true", "target=8",
                                        "layer=features.7")), url
    context.close()

    context, page = fresh(browser, url)  # the shared link
    body = page.inner_text("body")
    assert "digits-vgg with FALCON" in body and "Chosen layer: features.7" in body
    assert checked(page, "parameters") and tb.number_input(page, "target (× fewer)").input_value() == "8.00"
    assert page.get_by_label("show every module (BN, activations, pooling)").is_checked()
    context.close()


def test_ehp_fit_state_round_trips_through_its_url(server, browser):
    context, page = fresh(browser, f"{server}/ehp-fit?layer=features.7")
    rerun_after(page, page.get_by_role("radio", name="gradient descent", exact=True).click,
                text_js("Start gradient descent"))
    box = tb.number_input(page, "steps")
    box.fill("300")
    rerun_after(page, lambda: box.press("Enter"))
    rerun_after(page, page.get_by_role("radio", name="full speed", exact=True).click)
    url = page.url
    assert all(p in url for p in ("layer=features.7", "method_falcon=gd", "gd_steps=300", "gd_pace=full")), url
    context.close()

    context, page = fresh(browser, url)
    assert "Layer features.7 of digits-vgg" in page.inner_text("body")  # the fit summary of the chosen layer
    assert checked(page, "gradient descent") and checked(page, "full speed")
    assert tb.number_input(page, "steps").input_value() == "300"
    context.close()


def test_a_layer_chosen_in_sizing_opens_on_the_ehp_fit_page_and_back(server, browser):
    context, page = fresh(browser, f"{server}/sizing?model=digits-vgg&layer=features.7")
    assert "Chosen layer: features.7" in page.inner_text("body")
    page.get_by_role("link", name="Fit features.7 on the EHP fit page").click()
    page.wait_for_function("() => document.querySelector('h1') && document.querySelector('h1').innerText.includes('EHP fit')")
    wait_done(page)
    page.wait_for_function(shows("Layer features.7 of digits-vgg"))  # the fit summary of the chosen layer
    page.get_by_role("link", name="features.7 in the whole digits-vgg: Model sizing").click()
    page.wait_for_function("() => document.querySelector('h1') && document.querySelector('h1').innerText.includes('Model sizing')")
    wait_done(page)
    page.wait_for_function(shows("Chosen layer: features.7"))
    time.sleep(0.5)
    assert "digits-vgg with FALCON" in page.inner_text("body")
    context.close()
