"""Every web page in a real headless Chromium at a phone's width (390 px) and a laptop's (1360 px):
no horizontal scroll of the page, no serious or critical axe-core violation in light and dark mode,
focus kept across live updates, and what the run page shows about a failed run (its timeline,
the data's changes, the log lines its steps wrote).

axe-core comes from the npm registry: installed once into a cache directory (``INTERLOCK_AXE_DIR``,
default ``~/.cache/interlock/axe-core-<version>``) by ``npm``; without npm the tests are skipped,
except when CI is set: then they fail.
"""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import CI
from tests.test_web import serve
from tests.test_web_browser import CHROMEDRIVER, CHROMIUM, FLAGS, css, current_state, until

AXE_VERSION = "4.14.1"
WIDTHS = (390, 1360)
WORKFLOWS = "workflows,tests.web_workflows,tests.schedule_workflows"
LONG_TOKEN = uuid.uuid4().hex + uuid.uuid4().hex  # 64 characters with nowhere to break


def _unavailable(message):
    pytest.fail(message) if CI else pytest.skip(message)


@pytest.fixture(scope="session")
def axe_js():
    home = Path(os.environ.get("INTERLOCK_AXE_DIR") or Path.home() / ".cache" / "interlock" / f"axe-core-{AXE_VERSION}")
    script = home / "node_modules" / "axe-core" / "axe.min.js"
    if not script.exists():
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("needs npm to install axe-core (apt-get install npm)")
        # Installed beside the cache directory, then moved into place: test processes running
        # side by side (pytest-xdist) never see half an installation.
        home.parent.mkdir(parents=True, exist_ok=True)
        staging = home.with_name(f"{home.name}.{os.getpid()}")
        done = subprocess.run([npm, "install", "--prefix", str(staging), "--no-save", "--no-audit", "--no-fund",
                               f"axe-core@{AXE_VERSION}"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            _unavailable(f"npm could not install axe-core: {done.stderr[-2000:]}")
        try:
            staging.rename(home)
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
        if not script.exists():
            _unavailable(f"npm installed axe-core without {script}")
    return script.read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example workflows plus a settlement run that failed with a long token in its error,
    one that succeeded, a paused cargo run, schedules and a batch."""
    with serve(tmp_path_factory.mktemp("pages"), workflows=WORKFLOWS) as served:
        rt = served.rt
        from engine import batch_work, schedules

        schedules.sync_declared(rt)
        with rt.worker(2):
            failed = rt.start("test_settlement", {"customer": "ada@example.com", "card": "4242",
                                                  "items": ["BOOK-1", "BOOK-2"], "refuse": LONG_TOKEN},
                              business_key="INV-" + LONG_TOKEN)
            done = rt.start("test_settlement", {"customer": "bob@example.com", "card": "5555", "items": ["PEN"]},
                            business_key="INV-2")
            until(lambda: rt.get(failed.id).status == "failed" and rt.get(done.id).status == "succeeded",
                  timeout=60, message="the settlement runs to end")
            parcel = rt.start("delivery", {"parcel": "P-7", "printer_busy_checks": 0}, version=1)
            rt.send(parcel.id, "pay")
            until(lambda: rt.get(parcel.id).state == "shipped", timeout=30, message="the parcel to ship")
        from engine import migration_plans

        rt.start("delivery", {"parcel": "P-8"}, version=1)
        moved = migration_plans.create(rt, "delivery", 1, 2, mapping={"shipped": "in_transit"},
                                       filter={"state": "shipped"})
        migration_plans.apply(rt, moved["id"])
        while batch_work.work(rt):
            pass
        served.parcel, served.moved = rt.get(parcel.id), moved
        served.plan = migration_plans.create(rt, "delivery", 1, 2)  # not applied: its page offers a dry run
        cargo = [served.start(key=f"MSCU{i:07d}") for i in range(3)]
        rt.send(cargo[0].id, "depart", {"vessel": "Ever Given"})
        rt.pause(cargo[1].id, "waiting for the port")
        from engine import batches

        batch = batches.create(rt, "cancel", {"run_ids": [cargo[2].id]}, reason="duplicate booking")
        while batch_work.work(rt):
            pass
        served.failed, served.done, served.cargo, served.batch = rt.get(failed.id), rt.get(done.id), cargo, batch
        yield served


def _pages(site):
    return {
        "runs": "/", "runs-search": f"/?q={site.failed.id[:10]}", "run-failed": f"/runs/{site.failed.id}",
        "run-succeeded": f"/runs/{site.done.id}", "run-live": f"/runs/{site.cargo[0].id}",
        "run-paused": f"/runs/{site.cargo[1].id}", "workflows": "/workflows", "workflow": "/workflows/cargo",
        "workflow-orders": "/workflows/orders", "workflow-delivery": "/workflows/delivery",
        "diff": "/workflows/delivery/diff?from=1&to=2&map=shipped:in_transit",
        "diff-refused": "/workflows/delivery/diff?from=1&to=2&map=ship:in_transit", "schedules": "/schedules", "batch": f"/batches/{site.batch['id']}",
        "not-found": "/runs/" + "0" * 32, "dashboard": "/dashboard", "migrations": "/migrations",
        "migration": f"/migrations/{site.plan['id']}", "migration-applied": f"/migrations/{site.moved['id']}",
        "run-migrated": f"/runs/{site.parcel.id}",
    }


@pytest.fixture(scope="module", params=WIDTHS, ids=[f"{w}px" for w in WIDTHS])
def browser(request):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        _unavailable(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="interlock-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        if not flag.startswith("--window-size"):
            options.add_argument(flag)
    options.add_argument(f"--window-size={request.param},900")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.width = request.param
    # Chromium's windows are at least 500 px wide: a narrower viewport is emulated.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": request.param, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(browser, url):
    browser.get(url)
    until(lambda: browser.execute_script("return document.readyState") == "complete", message=f"{url} to load")
    assert browser.execute_script("return window.innerWidth") == browser.width


def _overflow(browser):
    """The page's horizontal scroll (0 when none) and the elements that stick out past the viewport."""
    return browser.execute_script("""
        const root = document.documentElement, width = root.clientWidth;
        const wide = [...document.querySelectorAll('body *')].filter(el => {
          const r = el.getBoundingClientRect();
          return r.width && r.right > width + 1 && getComputedStyle(el).position !== 'fixed'
            && !el.closest('.scroll-x, .diagram-box, pre');
        }).slice(0, 5).map(el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + '.' + el.className
                         + ' ' + Math.round(el.getBoundingClientRect().right));
        return [root.scrollWidth - width, wide];""")


def _axe(browser, axe_js, dark):
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})
    if not browser.execute_script("return typeof axe !== 'undefined'"):
        browser.execute_script(axe_js)
    result = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']},
                           resultTypes: ['violations']})
          .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                           .map(v => v.id + ': ' + v.help + ' @ ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')
                                 + ' ' + (n.failureSummary || '').split('\\n').slice(1, 2).join('')).join(' | '))))
          .catch(e => done(['axe failed: ' + e]));""")
    return result


def test_every_page_fits_the_width_and_passes_axe_in_light_and_dark_mode(site, browser, axe_js):
    browser.set_script_timeout(120)
    problems = {}
    for name, path in _pages(site).items():
        _open(browser, site.url + path)
        scroll, wide = _overflow(browser)
        if scroll > 0:
            problems[f"{name}: scrolls sideways by {scroll} px"] = wide
        for dark in (False, True):
            found = _axe(browser, axe_js, dark)
            if found:
                problems[f"{name} ({'dark' if dark else 'light'})"] = found
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())


def _active(browser):
    return browser.execute_script("""
        const el = document.activeElement, row = el.closest('[data-run-id]');
        return [el.tagName.toLowerCase(), el.id || el.getAttribute('href') || el.value, row ? row.dataset.runId : null,
                el.value === undefined ? null : el.value]""")


def test_focus_and_ticked_rows_survive_a_live_update_of_the_runs_page(site, browser):
    mine, other = site.start(key="FOCUS-1"), site.start(key="FOCUS-2")
    _open(browser, site.url + "/")
    until(lambda: css(browser, "#live")[0].text == "live", message="the runs page to go live")
    css(browser, f"input[name=run_id][value='{other.id}']")[0].click()
    link = css(browser, f"tr[data-run-id='{mine.id}'] a.run-link")[0]
    browser.execute_script("arguments[0].focus()", link)
    assert _active(browser)[2] == mine.id
    site.rt.send(mine.id, "depart")
    until(lambda: css(browser, f"tr[data-run-id='{mine.id}'][data-status]")[0].find_element(
        "css selector", "td.state").text == "in_transit", message="the live update of the row")
    tag, href, row, _ = _active(browser)
    assert (tag, row) == ("a", mine.id) and href == f"/runs/{mine.id}"
    assert css(browser, f"input[name=run_id][value='{other.id}']")[0].is_selected()


def test_focus_and_typing_survive_a_redraw_of_the_actions_panel(site, browser):
    run = site.start(key="FOCUS-3")
    _open(browser, f"{site.url}/runs/{run.id}")
    until(lambda: css(browser, "#live")[0].text == "live", message="the run page to go live")
    reason = css(browser, "#cancel-reason")[0]
    reason.click()
    reason.send_keys("duplicate")
    site.rt.send(run.id, "depart")  # the accepted events change: the actions panel is drawn again
    until(lambda: [o.get_attribute("value") for o in css(browser, "#send-event option")] == ["arrive", "declare_lost"]
          or current_state(browser) == "in_transit" and not css(browser, "#send-event option[value=depart]"),
          message="the actions panel redrawn")
    assert _active(browser)[:2] == ["input", "cancel-reason"]
    assert css(browser, "#cancel-reason")[0].get_attribute("value") == "duplicate"
    reason = css(browser, "#cancel-reason")[0]
    reason.send_keys(" booking")  # the caret is where it was: typing goes on at the end
    assert reason.get_attribute("value") == "duplicate booking"


def test_live_updates_can_be_paused_and_the_keys_move_between_runs(site, browser):
    run = site.start(key="PAUSE-1")
    _open(browser, site.url + "/")
    until(lambda: css(browser, "#live")[0].text == "live", message="the runs page to go live")
    css(browser, "#live-pause")[0].click()
    site.rt.send(run.id, "depart")
    until(lambda: css(browser, "#live-pause[data-held]"), message="the change held while paused")
    assert css(browser, f"tr[data-run-id='{run.id}'] td.state")[0].text == "booked"
    css(browser, "#live-pause")[0].click()
    until(lambda: css(browser, f"tr[data-run-id='{run.id}'] td.state")[0].text == "in_transit",
          message="the held change shown on resuming")

    from selenium.webdriver.common.action_chains import ActionChains

    browser.execute_script("document.activeElement.blur()")
    ActionChains(browser).send_keys("j").perform()
    first, second = [tr.get_attribute("data-run-id") for tr in css(browser, "tr[data-run-id]")][:2]
    assert _active(browser)[2] == first
    ActionChains(browser).send_keys("j").perform()
    assert _active(browser)[2] == second
    ActionChains(browser).send_keys("k").perform()
    assert _active(browser)[2] == first
    ActionChains(browser).send_keys("/").perform()
    assert _active(browser)[:2] == ["input", "search"]
    assert "/ search" in css(browser, "p.shortcuts")[0].text


def test_diagram_labels_do_not_overlap_as_the_browser_draws_them(site, browser):
    """The overlap test of tests/test_web_diagrams.py, with the sizes Chromium measures for the text."""
    _open(browser, site.url + "/workflows")
    found = browser.execute_script("""
        const hit = (a, b) => a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
        const out = [];
        for (const svg of document.querySelectorAll('svg.diagram')) {
          const labels = [...svg.querySelectorAll('g.edge text')].map(t => [t.textContent, t.getBBox()]);
          const states = [...svg.querySelectorAll('g.node > rect:not(.inner)')].map(r => [r.parentNode.dataset.state, r.getBBox()]);
          const view = svg.viewBox.baseVal;
          labels.forEach(([name, box], i) => {
            for (const [other, b] of labels.slice(i + 1)) if (hit(box, b)) out.push(`${svg.ariaLabel}: ${name} on ${other}`);
            for (const [state, b] of states) if (hit(box, b)) out.push(`${svg.ariaLabel}: ${name} on state ${state}`);
            if (box.x < 0 || box.y < 0 || box.x + box.width > view.width || box.y + box.height > view.height)
              out.push(`${svg.ariaLabel}: ${name} cut at the edge`);
          });
        }
        return [document.querySelectorAll('svg.diagram').length, out];""")
    assert found[0] >= 6 and found[1] == []


def test_the_run_page_shows_the_time_line_the_data_changes_and_the_steps_log_lines(site, browser):
    _open(browser, f"{site.url}/runs/{site.failed.id}")
    lanes = {lane.find_element("css selector", ".lane-name").text: lane for lane in css(browser, "#gantt .lane")}
    assert {"pricing", "charging", "price", "charge"} <= set(lanes)
    attempts = lanes["charge"].find_elements("css selector", "rect.failed")
    assert len(attempts) == 2 and lanes["charge"].find_elements("css selector", "rect.wait")
    hover = [r.find_element("css selector", "title").get_attribute("textContent") for r in attempts]
    assert hover[0].startswith("charge attempt 1: failed in ") and hover[0].endswith(" ms")
    assert all(r.rect["width"] > 0 for r in lanes["pricing"].find_elements("css selector", "rect"))

    priced = [li for li in css(browser, "#timeline > li.k-step_succeeded")][0]
    changes = [" ".join(li.get_attribute("textContent").split()) for li in priced.find_elements("css selector", "ul.diff li")]
    assert changes == ['+ currency added: "EUR"', "+ total added: 25.0"]  # "added:" for screen readers

    failed = css(browser, "#timeline > li.k-step_failed")
    lines = [li.find_element("css selector", "ol.log-lines").text for li in failed]
    assert "WARNING tests.web_workflows charging card 4242, attempt 1" in lines[0]
    assert "charging card 4242, attempt 2" in lines[1]
    assert "pricing 2 items for ada@example.com" in priced.find_element("css selector", "ol.log-lines").text


def test_times_are_relative_with_the_absolute_time_on_hover_in_the_zone_chosen(site, browser):
    from datetime import datetime, timezone

    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Tokyo"})
    try:
        _open(browser, f"{site.url}/runs/{site.failed.id}")
        started = site.failed.created_at
        utc = datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        tokyo = datetime.fromtimestamp(started + 9 * 3600, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        first = css(browser, "#run-head time.rel")[0]
        if browser.execute_script("return localStorage.getItem('interlock.timezone')") == "local":
            css(browser, "#time-zone")[0].click()  # the other width's test left it local
        until(lambda: css(browser, "#run-head time.rel")[0].get_attribute("title") == f"{utc} UTC",
              message="the absolute time in UTC on hover")
        assert first.text.endswith(" ago") and first.text[0].isdigit()
        entry = css(browser, "#timeline > li .when time")[0]
        assert len(entry.text) == 19 and entry.text[:4] == utc[:4]  # one format: 2026-12-01 16:36:07
        assert css(browser, "#time-zone")[0].text == "Times: UTC"
        css(browser, "#time-zone")[0].click()
        until(lambda: css(browser, "#run-head time.rel")[0].get_attribute("title") == f"{tokyo} Asia/Tokyo",
              message="the time in the browser's zone")
        _open(browser, site.url + "/")  # remembered in this browser
        until(lambda: css(browser, "#time-zone")[0].text == "Times: local (Asia/Tokyo)", message="the zone kept")
        until(lambda: css(browser, "td[data-label=Started] time")[0].get_attribute("title").endswith(" Asia/Tokyo"),
              message="the runs page's times in the zone kept")  # written by the script once the page is up
        css(browser, "#time-zone")[0].click()
    finally:
        browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})


def test_the_dashboard_draws_runs_per_hour_and_step_durations(site, browser):
    _open(browser, site.url + "/dashboard")
    started = css(browser, "section[data-chart=started] svg.bars rect.bar")
    assert {r.get_attribute("class") for r in started} >= {"bar failed", "bar succeeded"}
    assert all(r.rect["height"] > 0 and r.rect["width"] > 2 for r in started)
    newest = max(started, key=lambda r: r.rect["x"])
    assert newest.rect["x"] > css(browser, "section[data-chart=started] svg.bars")[0].rect["x"] + \
        0.9 * css(browser, "section[data-chart=started] svg.bars")[0].rect["width"]  # this hour, on the right
    hover = [r.find_element("css selector", "title").get_attribute("textContent") for r in started]
    assert any(t.endswith(": 1 failed") for t in hover)
    assert css(browser, "section[data-chart=finished] svg.bars rect.bar.cancelled")  # the batch's cancel
    rows = {tr.get_attribute("data-step"): tr.text for tr in css(browser, "table.steps tr[data-step]")}
    assert {"test_settlement.charge", "test_settlement.price"} <= set(rows)
    assert " 3 " in f" {rows['test_settlement.charge']} "  # two attempts of the failed run, one of the other


def test_a_plan_page_shows_its_verdicts_and_a_dry_run_and_a_run_page_its_migration(site, browser):
    _open(browser, f"{site.url}/migrations/{site.plan['id']}")
    verdicts = {a.get_attribute("data-outcome"): a.text for a in css(browser, "#verdicts article")}
    assert set(verdicts) == {"clean"}  # the run in ordered; the moved one is on v2 now, not judged
    assert "1 run(s) → ordered" in verdicts["clean"]
    css(browser, "#apply-form button")[0].click()
    until(lambda: css(browser, "#dry-run"), message="the dry run's result")
    assert "1 would move, 0 would be refused" in " ".join(css(browser, "#dry-run p")[0].text.split())
    assert css(browser, "#apply-form button")[0].text == "Move 1 run(s) now"

    _open(browser, f"{site.url}/runs/{site.parcel.id}")
    lanes = {lane.find_element("css selector", ".lane-name").text: lane for lane in css(browser, "#gantt .lane")}
    versions = [r.find_element("css selector", "title").get_attribute("textContent")
                for r in lanes["version"].find_elements("css selector", "rect")]
    assert versions[0].startswith("on v1 for ") and versions[2].startswith("on v2 for ")
    assert versions[1] == "migrated v1 → v2: shipped → in_transit"
    assert {"shipped", "in_transit"} <= set(lanes)
    [entry] = css(browser, "#timeline > li.k-migrated")
    text = " ".join(entry.text.split())
    assert "v1 → v2: shipped → in_transit" in text and "re-arms timer patience" in text
