"""The status page in a real browser: Debian's headless Chromium driven by Selenium.

The exporter polls a simulated fleet with faulty devices (one hanging, one unreachable, one with
an active error) and devices whose alias and labels carry markup. The page must count them right,
sort and filter, open the device page, show hostile strings as text, and fit a phone's width.
Screenshots go to $ARTIFACTS_DIR (default: test-artifacts/, not committed).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.config.schema import parse_config
from exporter.simulator.server import DeviceSpec, SimulatedFleet
from harness.processes import free_port
from harness.servers import require_binary, unavailable

from .conftest import override_replies

ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", Path(__file__).parent.parent / "test-artifacts"))
HOSTILE_ALIAS = "<img src=x id=pwned onerror=\"document.title='pwned'\">"
HOSTILE_LABEL = "</td><script>document.title='pwned'</script>"


def webdriver() -> Any:
    chromium = require_binary("chromium")
    chromedriver = require_binary("chromedriver")
    try:
        from selenium import webdriver as wd
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (test extras)")
    options = wd.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return wd.Chrome(service=Service(executable_path=chromedriver), options=options)


class Running:
    """A simulated fleet and an exporter polling it, on an event loop in a thread of its own
    (Selenium's calls block)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fleet: SimulatedFleet | None = None
        self.exporter: Exporter | None = None

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def start(self) -> str:
        specs = [
            DeviceSpec("charger-ok", "3p22k"),
            DeviceSpec("garage", "1p7k", alias=HOSTILE_ALIAS),
            DeviceSpec("hot-one", "1p7k"),
            DeviceSpec("meter", "3em"),
            DeviceSpec("stuck", "1p7k", fault="hang"),
        ]
        self.fleet = SimulatedFleet(specs, frozen=True)
        await self.fleet.start()
        hot = self.fleet.device("hot-one")
        override_replies(
            self.fleet,
            "hot-one",
            {
                "Active_errors.Get": {"overtemp": True, "rcd_error": False},
                "Charger_info.Get": lambda: {
                    **hot.read("Charger_info.Get"),
                    "has_active_errors": True,
                },
            },
        )
        devices = [
            {"name": n, "host": self.fleet.host(n), "labels": {"site": s}}
            for n, s in (
                ("charger-ok", "home"),
                ("garage", HOSTILE_LABEL),
                ("hot-one", "home"),
                ("meter", "office"),
                ("stuck", "office"),
            )
        ]
        devices.append(
            {"name": "unplugged", "host": f"127.0.0.1:{free_port()}", "labels": {"site": "office"}}
        )
        config = parse_config(
            f"listen: '127.0.0.1:{free_port()}'\n"
            f"devices: {json.dumps(devices)}\n"
            "poll: {interval: 1s, timeout: 500ms}\n"
            "grafana: {url: 'http://grafana.example:3000'}\n"
        )
        self.exporter = Exporter(config)
        await self.exporter.start()
        return f"http://127.0.0.1:{self.exporter.port}"

    async def stop(self) -> None:
        if self.exporter is not None:
            await self.exporter.stop()
        if self.fleet is not None:
            await self.fleet.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = webdriver()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    running = Running()
    base = running.run(running.start())
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # every device polled at least once
            with urllib.request.urlopen(f"{base}/api/devices") as resp:
                summary = json.load(resp)["summary"]
            if summary["pending"] == 0 and summary["down"] == 2:
                break
            time.sleep(0.3)
        yield base
    finally:
        running.run(running.stop())
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(5)


def wait_for(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("the page did not get there in time")
        time.sleep(0.1)


def shot(browser: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def rows(browser: Any) -> list[str]:
    # In one script: the table is redrawn every few seconds, and element handles found before a
    # redraw are stale after it.
    names: list[str] = browser.execute_script(
        "return [...document.querySelectorAll('#devices tbody tr[data-device]')]"
        ".map(tr => tr.dataset.device)"
    )
    return names


def loaded(browser: Any, url: str) -> None:
    browser.get(url)
    wait_for(lambda: browser.execute_script("return document.body.dataset.loaded === '1'"))


def test_summary_counts_the_fleet(browser: Any, site: str) -> None:
    loaded(browser, site + "/")
    text = {
        key: browser.find_element("id", f"s-{key}").text
        for key in ("configured", "up", "down", "pending")
    }
    assert text == {"configured": "6", "up": "4", "down": "2", "pending": "0"}
    by_label = browser.find_element("id", "by-label").text
    assert "office" in by_label and "home" in by_label
    shot(browser, "status-page")


def test_rows_show_state_in_words_and_errors_with_hints(browser: Any, site: str) -> None:
    loaded(browser, site + "/")
    cells: dict[str, str] = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#devices tbody tr[data-device]')]"
        ".map(tr => [tr.dataset.device, tr.innerText]))"
    )
    assert "Error: overtemperature" in cells["hot-one"]
    assert "Cannot connect" in cells["unplugged"] or "Connection refused" in cells["unplugged"]
    assert "No answer in time" in cells["stuck"]
    assert "kWh" in cells["charger-ok"] and "°C" in cells["charger-ok"]


def test_sorting_by_a_column_and_back(browser: Any, site: str) -> None:
    loaded(browser, site + "/")
    names = rows(browser)
    assert names == sorted(names)
    browser.find_element("css selector", "th[data-sort=name]").click()
    wait_for(lambda: rows(browser) == sorted(names, reverse=True))
    browser.find_element("css selector", "th[data-sort=down_since]").click()
    wait_for(lambda: set(rows(browser)[:2]) == {"stuck", "unplugged"})
    office = {"meter", "stuck", "unplugged"}
    labels = browser.find_element("css selector", "th[data-sort=labels_text]")
    labels.click()  # "site=</td>…" < "site=home" < "site=office"
    wait_for(lambda: rows(browser)[0] == "garage" and set(rows(browser)[3:]) == office)
    labels.click()
    wait_for(lambda: set(rows(browser)[:3]) == office and rows(browser)[5] == "garage")


def test_filtering_by_text_status_state_and_label(browser: Any, site: str) -> None:
    from selenium.webdriver.support.ui import Select

    loaded(browser, site + "/")
    browser.find_element("id", "q").send_keys("charger-ok")
    wait_for(lambda: rows(browser) == ["charger-ok"])
    browser.find_element("id", "q").clear()
    browser.find_element("id", "q").send_keys(" ")  # input event with an empty filter
    wait_for(lambda: len(rows(browser)) == 6)
    Select(browser.find_element("id", "status")).select_by_value("down")
    wait_for(lambda: sorted(rows(browser)) == ["stuck", "unplugged"])
    Select(browser.find_element("id", "status")).select_by_value("")
    Select(browser.find_element("id", "state")).select_by_value("error")
    wait_for(lambda: rows(browser) == ["hot-one"])
    Select(browser.find_element("id", "state")).select_by_value("")
    Select(browser.find_element("id", "label")).select_by_value("site:office")
    wait_for(lambda: sorted(rows(browser)) == ["meter", "stuck", "unplugged"])
    shot(browser, "status-page-filtered")


def test_hostile_device_strings_stay_text(browser: Any, site: str) -> None:
    loaded(browser, site + "/")
    wait_for(lambda: "garage" in rows(browser))
    time.sleep(0.5)  # an onerror would have fired by now
    assert browser.find_elements("id", "pwned") == []
    assert browser.title != "pwned"
    page = browser.find_element("id", "devices").text
    assert HOSTILE_LABEL.split("<script>")[0] in page or "script" in page
    browser.get(site + "/device/garage")
    wait_for(lambda: "garage" in browser.title)
    assert browser.find_elements("id", "pwned") == []
    assert browser.title != "pwned"
    assert HOSTILE_ALIAS in browser.find_element("tag name", "main").text


def test_device_page_shows_identity_values_limits_and_failures(browser: Any, site: str) -> None:
    browser.get(site + "/")
    wait_for(lambda: browser.execute_script("return document.body.dataset.loaded === '1'"))
    browser.find_element("link text", "charger-ok").click()
    wait_for(lambda: "charger-ok" in browser.title)
    main = browser.find_element("tag name", "main").text
    for expected in ("3p22k", "Firmware", "Charger_info.Get", "Current limits", "Live values"):
        assert expected in main, expected
    assert "kWh" in main and " A" in main
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "nav a")]
    assert any(h.endswith("/probe?target=charger-ok") for h in links)
    assert any(
        "grafana.example:3000/d/lektrico-device-detail?var-device=charger-ok" in h for h in links
    )
    shot(browser, "device-page")
    browser.get(site + "/device/stuck")
    wait_for(lambda: "stuck" in browser.title)
    failures = browser.find_element("tag name", "main").text
    assert "Last poll failures" in failures and "timeout" in failures


def test_phone_width_has_no_sideways_scrolling(browser: Any, site: str) -> None:
    browser.set_window_size(390, 844)
    try:
        loaded(browser, site + "/")
        width = browser.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert width[0] <= width[1], width
        assert not browser.find_element("css selector", "#devices thead").is_displayed()
        shot(browser, "status-page-phone")
        browser.get(site + "/device/charger-ok")
        width = browser.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert width[0] <= width[1] + 1, width
    finally:
        browser.set_window_size(1400, 1000)


def test_page_needs_nothing_from_elsewhere_and_forbids_inline_script(site: str) -> None:
    with urllib.request.urlopen(site + "/") as resp:
        csp = resp.headers["Content-Security-Policy"]
        body = resp.read().decode()
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "http://" not in body and "https://" not in body and "<script>" not in body
