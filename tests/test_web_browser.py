"""The web pages in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
live updates over SSE and, with SSE turned off, over the long-poll fallback; the send-event form;
search; an XSS payload shown as text."""

import os
import shutil
import tempfile
import time

import pytest
import requests

from tests.conftest import CI
from tests.test_web import XSS, serve

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1000"]


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        pytest.fail(message) if CI else pytest.skip(message)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must never download a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="interlock-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def until(predicate, timeout=10.0, message="condition"):
    """Poll ``predicate`` (exceptions count as "not yet") until truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # the page may be replacing the element just now
            value, last = None, exc
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last error: {last!r})")


def css(driver, selector):
    return driver.find_elements("css selector", selector)


def row_ids(driver):
    """The run ids in the table, read in one go (live refreshes replace the rows)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('tr[data-run-id]')].map(tr => tr.dataset.runId)")


def row_key(driver, run_id):
    return driver.execute_script(
        "const tr = document.querySelector(`tr[data-run-id='${arguments[0]}']`);"
        "return tr ? tr.querySelector('td.key').textContent : null", run_id)


def live_mode(driver):
    indicator = css(driver, "#live")[0]
    return indicator.get_attribute("data-mode") if indicator.text == "live" else None


def no_dialog(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def current_state(driver):
    nodes = css(driver, "#diagram g.node.current")
    return nodes[0].get_attribute("data-state") if nodes else None


@pytest.mark.serial  # a change must reach the page within 2 s: not beside other tests
@pytest.mark.parametrize("sse", [True, False], ids=["sse", "long-poll"])
def test_live_updates_and_the_send_form(tmp_path, browser, sse):
    expected = "sse" if sse else "poll"
    with serve(tmp_path, WEB_SSE=sse) as site, requests.Session() as api:
        site.start(key="OLD-1")
        browser.get(site.url + "/")
        until(lambda: live_mode(browser) == expected, message=f"the runs page to go live by {expected}")
        browser.execute_script("window.notReloaded = true")

        # A run started through the API appears without a reload.
        created = api.post(f"{site.url}/api/workflows/cargo/runs",
                           json={"data": {"container": "MSCU1", "manifest": ["toys"]}, "business_key": XSS})
        assert created.status_code == 201
        run_id = created.json()["id"]
        key = until(lambda: row_key(browser, run_id), message="the new run's row")
        assert browser.execute_script("return window.notReloaded") is True
        assert key == XSS                                                 # shown as text
        assert no_dialog(browser)

        # Its page: send an event with the form; the entry and the highlight move within 2 s.
        browser.get(f"{site.url}/runs/{run_id}")
        until(lambda: live_mode(browser) == expected, message=f"the run page to go live by {expected}")
        browser.execute_script("window.notReloaded = true")
        assert current_state(browser) == "booked"
        assert css(browser, "#run-key")[0].text == XSS and no_dialog(browser)
        css(browser, "#send-event option[value=depart]")[0].click()
        css(browser, "#send-data")[0].send_keys('{"vessel": "Ever Given"}')
        css(browser, "#send-form button[type=submit]")[0].click()
        confirm = until(lambda: css(browser, "#confirm-dialog[open] #confirm-ok"), message="the confirmation")[0]
        clicked = time.monotonic()
        confirm.click()
        until(lambda: any("depart: booked → in_transit" in li.text for li in css(browser, "#timeline li")),
              timeout=2.0, message="the new history entry")
        until(lambda: current_state(browser) == "in_transit", timeout=2.0, message="the highlight to move")
        assert time.monotonic() - clicked < 2.0
        assert css(browser, '#diagram g.edge.taken[data-edge="booked|depart|in_transit"]')
        assert browser.execute_script("return window.notReloaded") is True
        assert "Sent depart" in css(browser, "#notices")[0].text
        assert site.rt.get(run_id).data["vessel"] == "Ever Given"

        # A change made elsewhere (the API) shows up too.
        sent = time.monotonic()
        assert api.post(f"{site.url}/api/runs/{run_id}/events", json={"event": "arrive"}).status_code == 200
        until(lambda: current_state(browser) == "at_port", timeout=2.0, message="the API's change")
        until(lambda: any("arrive: in_transit → at_port" in li.text for li in css(browser, "#timeline li")),
              timeout=2.0, message="the API's history entry")
        assert time.monotonic() - sent < 2.0
        assert browser.execute_script("return window.notReloaded") is True
        assert [o.get_attribute("value") for o in css(browser, "#send-event option")] == ["inspect"]


def test_search_finds_exactly_the_run_and_shows_payloads_as_text(tmp_path, browser):
    with serve(tmp_path) as site:
        wanted = site.start(key="MSCU1234565")
        for key in ("MSCU1234566", "TGHU0000001", XSS):
            site.start(key=key)
        browser.get(site.url + "/")
        box = until(lambda: css(browser, "#search"), message="the search box")[0]
        box.send_keys("MSCU1234565")
        box.submit()
        until(lambda: "q=MSCU1234565" in browser.current_url, message="the search in the URL")
        assert until(lambda: row_ids(browser), message="the results") == [wanted.id]

        browser.get(site.url + "/")
        box = until(lambda: css(browser, "#search"), message="the search box")[0]
        box.send_keys(XSS)
        box.submit()
        found = until(lambda: "q=" in browser.current_url and row_ids(browser), message="the results")
        assert len(found) == 1 and row_key(browser, found[0]) == XSS
        assert no_dialog(browser)
        assert browser.execute_script("return document.querySelectorAll('main script').length") == 0


def test_reconnects_after_errors_and_says_so(tmp_path, browser):
    with serve(tmp_path, WEB_SSE=False) as site:
        run = site.start()
        failing = {"on": False}

        def outage():  # the live routes fail while "on", as behind a proxy that lost the backend
            from flask import request

            live = request.path.startswith("/live/") or request.headers.get("X-Interlock-Fragment")
            if failing["on"] and live:
                return "backend down", 502
            return None

        site.app.before_request_funcs.setdefault(None, []).append(outage)
        browser.get(f"{site.url}/runs/{run.id}")
        until(lambda: live_mode(browser) == "poll", message="the page to go live")
        failing["on"] = True
        site.rt.send(run.id, "depart")  # ends the held poll; its follow-up requests fail
        until(lambda: css(browser, "#live")[0].get_attribute("data-state") == "reconnecting",
              message="the page to say it is reconnecting")
        assert current_state(browser) == "booked"
        failing["on"] = False
        until(lambda: live_mode(browser) == "poll", timeout=15, message="the page to be live again")
        until(lambda: current_state(browser) == "in_transit", timeout=5, message="the missed change")


def test_search_fields_filter_the_runs_page(tmp_path, browser):
    with serve(tmp_path, workflows="workflows,tests.search_workflows") as site:
        acme = [site.start("test_search_order", {"customer": "ACME", "base": 10}, key=f"A-{i}").id for i in range(2)]
        site.start("test_search_order", {"customer": "Globex", "base": 10}, key="G-1")
        site.start(key="ACME")  # a cargo run whose business key is the word, not a field
        browser.get(site.url + "/")
        box = until(lambda: css(browser, "#search"), message="the search box")[0]
        box.send_keys("customer:ACME")
        box.submit()
        until(lambda: "customer" in browser.current_url, message="the search in the URL")
        assert sorted(until(lambda: row_ids(browser), message="the results")) == sorted(acme)


def test_the_schedules_page_lists_schedules_and_triggers_one(tmp_path, browser):
    with serve(tmp_path, workflows="workflows,tests.schedule_workflows") as site:
        from engine import schedules

        schedules.sync_declared(site.rt)
        browser.get(site.url + "/schedules")
        names = until(lambda: [s.get_attribute("data-schedule") for s in css(browser, "section.schedule")],
                      message="the schedules")
        assert sorted(names) == ["hourly-report", "report"]  # unnamed, a schedule takes its workflow's name
        hourly = css(browser, "section.schedule[data-schedule='hourly-report']")[0]
        assert len(hourly.find_elements("css selector", "ol.next-times li")) == 5
        hourly.find_element("xpath", ".//button[text()='Trigger now']").click()
        until(lambda: css(browser, "section.schedule[data-schedule='hourly-report'] table.ticks a.mono"),
              message="the tick's run on the page")
        [run] = site.rt.list_runs(workflow="report").runs
        assert css(browser, "section.schedule[data-schedule='hourly-report'] table.ticks a.mono")[0].text == run.id


def test_the_runs_page_cancels_the_selected_runs_as_one_batch(tmp_path, browser):
    with serve(tmp_path) as site:
        from engine import batch_work

        picked = [site.start(key=f"BULK-{i}").id for i in range(2)]
        kept = site.start(key="BULK-KEEP").id
        browser.get(site.url + "/")
        until(lambda: len(css(browser, "input[name='run_id']")) == 3, message="a checkbox per run")
        def tick(run_id):  # found afresh each time: a live refresh may replace the row meanwhile
            box = css(browser, f"input[name='run_id'][value='{run_id}']")[0]
            if not box.is_selected():
                box.click()
            return box.is_selected()

        for run_id in picked:
            until(lambda: tick(run_id), message=f"run {run_id} ticked")
        until(lambda: css(browser, "form#bulk select[name='action'] option[value='cancel']")[0].click() or True,
              message="the cancel action chosen")
        until(lambda: css(browser, "form#bulk button[type='submit']")[0].click() or True, message="the form sent")
        confirm = until(lambda: [b for b in css(browser, "button.primary") if b.text == "Confirm"],
                        message="the confirmation page")[0]
        assert "2" in browser.find_element("css selector", "main").text  # how many runs it will cancel
        confirm.click()
        until(lambda: css(browser, "section#batch"), message="the batch's page")
        while batch_work.work(site.rt):  # what a worker's reconciler does, chunk by chunk
            pass
        assert [site.rt.get(r).status for r in picked] == ["cancelled", "cancelled"]
        assert site.rt.get(kept).status != "cancelled"
        browser.refresh()
        until(lambda: css(browser, "section#batch[data-status='done']"), message="the batch shown done")


def test_the_diff_page_marks_both_diagrams_of_delivery(tmp_path, browser):
    """From the workflow page's form to the diff of delivery 1 → 2 with shipped renamed in_transit:
    the removed, renamed, changed and added states and edges are marked with a sign and a line
    pattern as well as a colour, and no label overlaps as Chromium draws them."""
    with serve(tmp_path) as site:
        browser.get(f"{site.url}/workflows/delivery")
        form = until(lambda: css(browser, "#compare form"), message="the compare form")[0]
        assert form.find_element("css selector", "select[name=from] option:checked").text == "1"
        assert form.find_element("css selector", "select[name=to] option:checked").text == "2"
        form.find_element("css selector", "input[name=map]").send_keys("shipped:in_transit")
        form.find_element("css selector", "button[type=submit]").click()
        until(lambda: "/workflows/delivery/diff?" in browser.current_url and css(browser, "svg.diagram"),
              message="the diff page")
        assert "map=shipped%3Ain_transit" in browser.current_url
        old, new = (css(browser, f"section[data-version='{v}'] svg.diagram")[0] for v in (1, 2))

        def marked(svg, kind):
            return sorted(g.get_attribute("data-state") or g.get_attribute("data-edge")
                          for g in svg.find_elements("css selector", f"g.mark-{kind}"))

        assert marked(old, "removed") == ["labelling", "labelling|labelled|shipped", "packing|packed|labelling"]
        assert marked(old, "renamed") == ["shipped"] and marked(new, "renamed") == ["in_transit"]
        assert marked(old, "changed") == marked(new, "changed") == ["packing"]
        assert marked(new, "added") == ["packing|packed|in_transit"] and marked(new, "removed") == []
        # Not colour alone: a sign in each marked node's badge and each marked label, removed dashed.
        badge = old.find_element("css selector", "g.node[data-state=labelling] .mark-badge text")
        assert badge.text == "\u2212"
        assert new.find_element("css selector", "g.edge.mark-added text").text == "+ packed"
        removed = old.find_element("css selector", "g.node[data-state=labelling] > rect")
        assert browser.execute_script("return getComputedStyle(arguments[0]).strokeDasharray", removed) not in ("", "none")
        colours = {kind: browser.execute_script("return getComputedStyle(arguments[0]).stroke", svg.find_element(
            "css selector", f"g.node.mark-{kind} > rect")) for svg, kind in ((old, "removed"), (new, "renamed"))}
        assert len(set(colours.values())) == 2
        assert [s.text for s in css(browser, "#diff-legend span")] == [
            "+ added", "\u2212 removed (dashed)", "~ changed", "= renamed (dotted)"]
        items = [" ".join(li.get_attribute("textContent").split()) for li in css(browser, "#changes li")]
        assert "= renamed: state shipped renamed in_transit" in items  # "renamed:" for screen readers
        assert "~ changed: timer patience (shipped → in_transit): after 3 days → 5 days" in items
        found = browser.execute_script("""
            const hit = (a, b) => a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
            const out = [];
            for (const svg of document.querySelectorAll('svg.diagram')) {
              const labels = [...svg.querySelectorAll('g.edge text')].map(t => [t.textContent, t.getBBox()]);
              const blocks = [...svg.querySelectorAll('g.node > rect:not(.inner), g.node .mark-badge circle')]
                .map(r => [r.closest('g.node').dataset.state, r.getBBox()]);
              labels.forEach(([name, box], i) => {
                for (const [other, b] of labels.slice(i + 1)) if (hit(box, b)) out.push(`${name} on ${other}`);
                for (const [state, b] of blocks) if (hit(box, b)) out.push(`${name} on state ${state}`);
              });
            }
            return out;""")
        assert found == []
