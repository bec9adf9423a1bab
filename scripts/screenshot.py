"""Screenshots of the web pages for the README (`make screenshots`).

Runs the example workflows on a throwaway SQLite database with an in-process worker,
serves the app on 127.0.0.1, and has Debian's headless Chromium (``apt-get install chromium
chromium-driver``) photograph the run page, the runs page and the dashboard into docs/, each at
a laptop's width (1360 px: ``<page>.png``) and a phone's (390 px: ``<page>-390.png``).

    .venv/bin/python scripts/screenshot.py [--out docs]
"""

import argparse
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]


def wait_until(predicate, timeout=30.0, message="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {message}")
        time.sleep(0.05)


def browser(width, height):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='interlock-chromium-')}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def populate(rt):
    """A featured cargo run whose customs filing fails until it is held, and some company."""
    base = {"origin": "Shanghai", "destination": "Rotterdam", "manifest": ["electronics", "textiles"],
            "check_every_seconds": 0.2, "arrives_after_checks": 2}
    others = []
    for i, key in enumerate(["MSCU7001234", "TGHU5550001", "CMAU3141592", "MSKU2718281"]):
        run = rt.start("cargo", {**base, "container": key, "customs_outages": 0}, business_key=key)
        others.append(run.id)
        if i % 2 == 0:
            rt.send(run.id, "depart")
    for i in range(3):
        rt.start("orders", {"order_id": f"A-10{i}", "customer": "ada@example.com", "card": "4242",
                            "items": [{"sku": "BOOK-1", "qty": 1 + i, "price": 12.5}]},
                 business_key=f"A-10{i}")
    featured = rt.start("cargo", {**base, "container": "MSCU1234565", "customs_outages": 9},
                        business_key="MSCU1234565")
    rt.send(featured.id, "depart", {"vessel": "Ever Given"})
    wait_until(lambda: rt.get(featured.id).state == "at_port", message="the featured run to reach port")
    rt.send(featured.id, "inspect")
    # Six failed filings (with back-off), then on_error sends `held`: back at port.
    wait_until(lambda: rt.get(featured.id).state == "at_port", timeout=60,
               message="customs to hold the featured run")
    return featured


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from werkzeug.serving import make_server

    from api import create_app
    from engine.config import Settings
    from engine.db import Database
    from engine.runtime import Interlock

    work = tempfile.mkdtemp(prefix="interlock-shots-")
    url = f"sqlite:///{work}/interlock.db"
    Database(url).upgrade()
    rt = Interlock(Settings(database_url=url, workflows="workflows", poll_interval=0.05))
    app = create_app({"SECRET_KEY": "screenshots"}, interlock=rt)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    driver = None
    try:
        with rt.worker(4):
            featured = populate(rt)
            driver = browser(1360, 1000)
            written = []
            for width, suffix in ((1360, ""), (390, "-390")):
                for name, path, live, cap in (("run-page", f"/runs/{featured.id}", True, 2600),
                                              ("runs-page", "/", True, 1400 if width < 500 else 700),
                                              ("dashboard", "/dashboard", False, 1800)):
                    # Chromium's windows are at least 500 px wide: a narrower viewport is emulated.
                    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                        "width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
                    driver.get(base + path)
                    if live:
                        wait_until(lambda: driver.find_element("id", "live").text == "live",
                                   message=f"{path} to go live")
                    driver.execute_script(
                        "const d = document.querySelector('li.k-step_failed details.traceback'); if (d) d.open = true;")
                    height = driver.execute_script("return document.documentElement.scrollHeight")
                    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                        "width": width, "height": min(max(height, 600), cap), "deviceScaleFactor": 1, "mobile": False})
                    target = out / f"{name}{suffix}.png"
                    driver.save_screenshot(str(target))
                    written.append(str(target))
            print("wrote", ", ".join(written))
    finally:
        if driver is not None:
            driver.quit()
        server.shutdown()
        rt.close()


if __name__ == "__main__":
    main()
