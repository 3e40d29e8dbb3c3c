"""Driving the console in a real headless Chromium (selenium): the fixtures (one browser per
module, a blank page per test, where screenshots go: ``$DURABLE_SCREENSHOTS``, else
``<repo>/.artifacts/screenshots/``), waits that look again when the page re-renders, clicks,
full-page screenshots, the page's console errors, and selenium's blocking calls in a thread.

``tests/conftest.py`` loads it as a plugin, so its fixtures are every test's."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]
#: How long the page may take to show a change (it follows the server's event stream).
UI_TIMEOUT_S = 15.0


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    # the page re-renders a section when its data changes: an element found a moment ago may
    # have been replaced, so look again
    return WebDriverWait(
        driver,
        UI_TIMEOUT_S,
        poll_frequency=0.1,
        ignored_exceptions=(StaleElementReferenceException,),
    )


def find(driver: WebDriver, css: str) -> WebElement:
    return wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def attribute_is(css: str, name: str, value: str) -> Callable[[WebDriver], bool]:
    def check(driver: WebDriver) -> bool:
        elements = driver.find_elements(By.CSS_SELECTOR, css)
        return bool(elements) and elements[0].get_attribute(name) == value

    return check


def click(driver: WebDriver, css: str) -> None:
    wait(driver).until(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()


def shown(driver: WebDriver, css: str) -> bool:
    return any(element.is_displayed() for element in driver.find_elements(By.CSS_SELECTOR, css))


def screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page, not just the window (Chromium's DevTools protocol)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def console(driver: WebDriver) -> list[str]:
    """The page's console errors since the last call: script errors, CSP violations, failed
    loads."""
    # selenium leaves get_log unannotated
    log: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in log if entry["level"] == "SEVERE"]


def no_console_errors(driver: WebDriver) -> None:
    assert console(driver) == []


async def in_browser(driver: WebDriver, fn: Callable[[], None]) -> None:
    """Run ``fn`` (selenium calls) in a thread; when it fails, say what the console said."""

    def run() -> None:
        try:
            fn()
        except Exception as exc:
            errors = console(driver)
            if errors:
                exc.add_note("the page's console: " + "\n".join(errors))
            raise

    await anyio.to_thread.run_sync(run)


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: the dashboard's browser tests need Debian's "
            "chromium and chromium-driver packages — run the test setup (`make test` installs "
            "them: apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: WebDriver) -> Iterator[WebDriver]:
    """The module's browser on a blank page, its console emptied of the previous test's lines
    (a page left open keeps polling a server that has stopped)."""
    chromium.get("about:blank")
    console(chromium)  # reading the log empties it
    yield chromium
    chromium.get("about:blank")


@pytest.fixture
def screenshots() -> Path:
    directory = Path(os.environ.get("DURABLE_SCREENSHOTS") or ROOT / ".artifacts" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory
