"""The dashboard in a real headless Chromium: failed work, a task page, Retry and Cancel clicks.

Debian's ``chromium`` and ``chromium-driver`` packages must be installed (the test setup does it);
without them these tests fail, they are never skipped. Screenshots go to ``$DURABLE_SCREENSHOTS``,
else ``<repo>/.artifacts/screenshots/``.

The worker and the dashboard run in-process (``dashboard_app.running``); selenium is synchronous,
so each browser session runs in a thread (``anyio.to_thread.run_sync``).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from dashboard_app import QUEUE, Upstream, make_app, running, wait_task
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

from durable import TaskState

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]
#: How long the page may take to show a change (it polls every second).
UI_TIMEOUT_S = 15.0


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
    _console(chromium)  # reading the log empties it
    yield chromium
    chromium.get("about:blank")


@pytest.fixture
def screenshots() -> Path:
    directory = Path(os.environ.get("DURABLE_SCREENSHOTS") or ROOT / ".artifacts" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    # the page re-renders a section when its data changes: an element found a moment ago may
    # have been replaced, so look again
    return WebDriverWait(
        driver,
        UI_TIMEOUT_S,
        poll_frequency=0.1,
        ignored_exceptions=(StaleElementReferenceException,),
    )


def _find(driver: WebDriver, css: str) -> WebElement:
    return _wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def _attribute_is(css: str, name: str, value: str) -> Callable[[WebDriver], bool]:
    def check(driver: WebDriver) -> bool:
        elements = driver.find_elements(By.CSS_SELECTOR, css)
        return bool(elements) and elements[0].get_attribute(name) == value

    return check


def _click(driver: WebDriver, css: str) -> None:
    _wait(driver).until(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()


def _shown(driver: WebDriver, css: str) -> bool:
    return any(element.is_displayed() for element in driver.find_elements(By.CSS_SELECTOR, css))


def _screenshot(driver: WebDriver, path: Path) -> None:
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


def _console(driver: WebDriver) -> list[str]:
    """The page's console errors since the last call: script errors, CSP violations, failed
    loads."""
    # selenium leaves get_log unannotated
    log: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in log if entry["level"] == "SEVERE"]


def _no_console_errors(driver: WebDriver) -> None:
    assert _console(driver) == []


async def _in_browser(driver: WebDriver, fn: Callable[[], None]) -> None:
    """Run ``fn`` (selenium calls) in a thread; when it fails, say what the console said."""

    def run() -> None:
        try:
            fn()
        except Exception as exc:
            errors = _console(driver)
            if errors:
                exc.add_note("the page's console: " + "\n".join(errors))
            raise

    await anyio.to_thread.run_sync(run)


async def test_retry_clicked_on_a_failed_task_completes_it_live(
    dsn: str, browser: WebDriver, screenshots: Path
) -> None:
    upstream = Upstream()
    app = make_app(dsn, upstream)
    async with running(app) as base:
        handle = await app.spawn("fetch_feed", {"url": "https://example.com/feed"})
        await wait_task(app, handle.task_id, TaskState.FAILED)
        task_id = str(handle.task_id)

        def overview() -> None:
            browser.get(f"{base}/")
            row_css = f'tr.failed-row[data-task-id="{task_id}"]'
            row = _find(browser, row_css)
            # failed work, grouped by reason class: a ConnectionError is a transport failure
            assert row.get_attribute("data-state") == "failed"
            assert row.get_attribute("data-reason-class") == "transport"
            assert "ConnectionError" in row.text
            assert "the upstream is down" in row.text
            assert _shown(browser, f"{row_css} button.retry")
            assert not _shown(browser, f"{row_css} button.cancel")
            chip = _find(browser, '.chip[data-reason-class="transport"]')
            assert chip.get_attribute("data-count") == "1"
            assert _find(browser, '.chip[data-reason-class="validation"]').get_attribute(
                "data-count"
            ) == ("0")
            groups = _find(browser, "#failure-groups table").text
            assert "ConnectionError" in groups
            assert "fetch_feed" in groups
            failed = _find(browser, f'tr[data-queue="{QUEUE}"] td[data-state="failed"]')
            assert failed.text == "1"
            _wait(browser).until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
            _screenshot(browser, screenshots / "overview.png")
            _no_console_errors(browser)
            _click(browser, f"{row_css} a.task-link")

        await _in_browser(browser, overview)

        def task_page_before() -> None:
            _wait(browser).until(ec.url_to_be(f"{base}/tasks/{task_id}"))
            _wait(browser).until(_attribute_is("#task-state .badge", "data-state", "failed"))
            assert _find(browser, "h1").text == "fetch_feed"
            assert _find(browser, "#task-attempt").text == "1/1"
            _wait(browser).until(ec.text_to_be_present_in_element((By.ID, "progress-pct"), "50%"))
            assert "downloaded, parsing" in _find(browser, "#task-progress").text
            run = _find(browser, "#runs tr.run")
            assert run.get_attribute("data-state") == "failed"
            assert "ConnectionError" in run.text
            # the code version the run ran (derived from the app's handlers: none declared)
            assert "version" in _find(browser, "#runs thead").text.lower()
            assert _find(browser, "#runs tr.run td.run-version").text == app.version
            assert not _shown(browser, "#published-state")  # the task published nothing
            assert "download" in _find(browser, '#checkpoints tr[data-step="download"]').text
            _click(browser, "#runs details.traceback summary")
            assert "Traceback" in _find(browser, "#runs details.traceback pre").text
            assert _shown(browser, ".toolbar button.retry")
            assert not _shown(browser, ".toolbar button.cancel")
            browser.execute_script("window.durableTestMarker = 'not reloaded'")
            _screenshot(browser, screenshots / "task-before-retry.png")

        await _in_browser(browser, task_page_before)

        upstream.up = True  # the retried run gets through

        def retry_and_watch() -> None:
            _click(browser, ".toolbar button.retry")
            _wait(browser).until(ec.text_to_be_present_in_element((By.ID, "messages"), "Retried"))
            assert "failed →" in _find(browser, "#messages").text
            # the page updates by itself: the state turns completed without a reload
            _wait(browser).until(_attribute_is("#task-state .badge", "data-state", "completed"))
            _wait(browser).until(ec.text_to_be_present_in_element((By.ID, "progress-pct"), "100%"))
            assert browser.execute_script("return window.durableTestMarker") == "not reloaded"
            states = [
                row.get_attribute("data-state")
                for row in browser.find_elements(By.CSS_SELECTOR, "#runs tr.run")
            ]
            assert states == ["failed", "completed"]
            # the traceback opened before the retry stays open across the re-render
            assert _find(browser, "#runs details.traceback").get_attribute("open") is not None
            assert not _shown(browser, ".toolbar button.retry")
            assert not _shown(browser, ".toolbar button.cancel")
            _screenshot(browser, screenshots / "task-after-retry.png")
            _no_console_errors(browser)

        await _in_browser(browser, retry_and_watch)

        record = await app.get_task(handle.task_id)
    assert record.state is TaskState.COMPLETED
    assert record.result == {"items": 2}


async def test_cancel_clicked_on_retrying_and_pending_tasks_cancels_them(
    dsn: str, browser: WebDriver, screenshots: Path
) -> None:
    app = make_app(dsn, Upstream())
    async with running(app) as base:
        retrying = await app.spawn("always_down", {"to": "ops@example.com"})
        later = await app.spawn("send_digest", {"day": "monday"}, delay=3600)
        await wait_task(app, retrying.task_id, TaskState.PENDING, failed_runs=1)

        def cancel_retrying_on_the_overview() -> None:
            browser.get(f"{base}/")
            row_css = f'tr.failed-row[data-task-id="{retrying.task_id}"]'
            _wait(browser).until(_attribute_is(row_css, "data-state", "retrying"))
            assert not _shown(browser, f"{row_css} button.retry")
            _screenshot(browser, screenshots / "overview-retrying.png")
            _click(browser, f"{row_css} button.cancel")
            _wait(browser).until(ec.text_to_be_present_in_element((By.ID, "messages"), "Cancelled"))
            # cancelled work is dead: the row stays, now with Retry instead of Cancel
            _wait(browser).until(_attribute_is(row_css, "data-state", "failed"))
            _wait(browser).until(lambda d: _shown(d, f"{row_css} button.retry"))
            assert not _shown(browser, f"{row_css} button.cancel")
            _no_console_errors(browser)

        await _in_browser(browser, cancel_retrying_on_the_overview)

        def cancel_pending_on_its_page() -> None:
            browser.get(f"{base}/tasks/{later.task_id}")
            _wait(browser).until(_attribute_is("#task-state .badge", "data-state", "pending"))
            assert not _shown(browser, ".toolbar button.retry")
            _click(browser, ".toolbar button.cancel")
            _wait(browser).until(_attribute_is("#task-state .badge", "data-state", "cancelled"))
            assert "pending → cancelled" in _find(browser, "#messages").text
            _wait(browser).until(lambda d: _shown(d, ".toolbar button.retry"))
            assert not _shown(browser, ".toolbar button.cancel")
            _screenshot(browser, screenshots / "task-cancelled.png")
            _no_console_errors(browser)

        await _in_browser(browser, cancel_pending_on_its_page)

        assert (await app.get_task(retrying.task_id)).state is TaskState.CANCELLED
        assert (await app.get_task(later.task_id)).state is TaskState.CANCELLED


async def test_read_only_mode_draws_no_buttons(
    dsn: str, browser: WebDriver, screenshots: Path
) -> None:
    app = make_app(dsn, Upstream())
    async with running(app, read_only=True) as base:
        failed = await app.spawn("fetch_feed", {"url": "https://example.com/feed"})
        await wait_task(app, failed.task_id, TaskState.FAILED)

        def look() -> None:
            browser.get(f"{base}/")
            _find(browser, f'tr.failed-row[data-task-id="{failed.task_id}"]')
            assert _find(browser, "#read-only").text == "read-only"
            assert browser.find_elements(By.CSS_SELECTOR, "button.retry, button.cancel") == []
            _screenshot(browser, screenshots / "overview-read-only.png")
            browser.get(f"{base}/tasks/{failed.task_id}")
            _wait(browser).until(_attribute_is("#task-state .badge", "data-state", "failed"))
            assert browser.find_elements(By.CSS_SELECTOR, "button.retry, button.cancel") == []
            _no_console_errors(browser)

        await _in_browser(browser, look)
