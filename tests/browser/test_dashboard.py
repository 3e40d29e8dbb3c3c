"""The dashboard in a real headless Chromium: failed work, a task page, Retry and Cancel clicks.

Debian's ``chromium`` and ``chromium-driver`` packages must be installed (the test setup does it);
without them these tests fail, they are never skipped. Screenshots go to ``$DURABLE_SCREENSHOTS``,
else ``<repo>/.artifacts/screenshots/``.

The worker and the dashboard run in-process (``dashboard_app.running``); selenium is synchronous,
so each browser session runs in a thread (``support.browser.in_browser``). The fixtures
(``browser``, ``screenshots``) are in ``support/browser.py``, a plugin of ``tests/conftest.py``;
``test_console_pages.py`` drives the newer pages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_app import QUEUE, Upstream, make_app, running, wait_task
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from support.browser import (
    attribute_is,
    click,
    find,
    in_browser,
    no_console_errors,
    screenshot,
    shown,
    wait,
)

from durable import TaskState

pytestmark = pytest.mark.anyio


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
            row = find(browser, row_css)
            # failed work, grouped by reason class: a ConnectionError is a transport failure
            assert row.get_attribute("data-state") == "failed"
            assert row.get_attribute("data-reason-class") == "transport"
            assert "ConnectionError" in row.text
            assert "the upstream is down" in row.text
            assert shown(browser, f"{row_css} button.retry")
            assert not shown(browser, f"{row_css} button.cancel")
            chip = find(browser, '.chip[data-reason-class="transport"]')
            assert chip.get_attribute("data-count") == "1"
            assert find(browser, '.chip[data-reason-class="validation"]').get_attribute(
                "data-count"
            ) == ("0")
            groups = find(browser, "#failure-groups table").text
            assert "ConnectionError" in groups
            assert "fetch_feed" in groups
            failed = find(browser, f'tr[data-queue="{QUEUE}"] td[data-state="failed"]')
            assert failed.text == "1"
            wait(browser).until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
            screenshot(browser, screenshots / "overview.png")
            no_console_errors(browser)
            click(browser, f"{row_css} a.task-link")

        await in_browser(browser, overview)

        def task_page_before() -> None:
            wait(browser).until(ec.url_to_be(f"{base}/tasks/{task_id}"))
            wait(browser).until(attribute_is("#task-state .badge", "data-state", "failed"))
            assert find(browser, "h1").text == "fetch_feed"
            assert find(browser, "#task-attempt").text == "1/1"
            wait(browser).until(ec.text_to_be_present_in_element((By.ID, "progress-pct"), "50%"))
            assert "downloaded, parsing" in find(browser, "#task-progress").text
            run = find(browser, "#runs tr.run")
            assert run.get_attribute("data-state") == "failed"
            assert "ConnectionError" in run.text
            # the code version the run ran (derived from the app's handlers: none declared)
            assert "version" in find(browser, "#runs thead").text.lower()
            assert find(browser, "#runs tr.run td.run-version").text == app.version
            assert not shown(browser, "#published-state")  # the task published nothing
            assert "download" in find(browser, '#checkpoints tr[data-step="download"]').text
            click(browser, "#runs details.traceback summary")
            assert "Traceback" in find(browser, "#runs details.traceback pre").text
            assert shown(browser, ".toolbar button.retry")
            assert not shown(browser, ".toolbar button.cancel")
            browser.execute_script("window.durableTestMarker = 'not reloaded'")
            screenshot(browser, screenshots / "task-before-retry.png")

        await in_browser(browser, task_page_before)

        upstream.up = True  # the retried run gets through

        def retry_and_watch() -> None:
            click(browser, ".toolbar button.retry")
            wait(browser).until(ec.text_to_be_present_in_element((By.ID, "messages"), "Retried"))
            assert "failed →" in find(browser, "#messages").text
            # the page updates by itself: the state turns completed without a reload
            wait(browser).until(attribute_is("#task-state .badge", "data-state", "completed"))
            wait(browser).until(ec.text_to_be_present_in_element((By.ID, "progress-pct"), "100%"))
            assert browser.execute_script("return window.durableTestMarker") == "not reloaded"
            states = [
                row.get_attribute("data-state")
                for row in browser.find_elements(By.CSS_SELECTOR, "#runs tr.run")
            ]
            assert states == ["failed", "completed"]
            # the traceback opened before the retry stays open across the re-render
            assert find(browser, "#runs details.traceback").get_attribute("open") is not None
            assert not shown(browser, ".toolbar button.retry")
            assert not shown(browser, ".toolbar button.cancel")
            screenshot(browser, screenshots / "task-after-retry.png")
            no_console_errors(browser)

        await in_browser(browser, retry_and_watch)

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
            wait(browser).until(attribute_is(row_css, "data-state", "retrying"))
            assert not shown(browser, f"{row_css} button.retry")
            screenshot(browser, screenshots / "overview-retrying.png")
            click(browser, f"{row_css} button.cancel")
            wait(browser).until(ec.text_to_be_present_in_element((By.ID, "messages"), "Cancelled"))
            # cancelled work is dead: the row stays, now with Retry instead of Cancel
            wait(browser).until(attribute_is(row_css, "data-state", "failed"))
            wait(browser).until(lambda d: shown(d, f"{row_css} button.retry"))
            assert not shown(browser, f"{row_css} button.cancel")
            no_console_errors(browser)

        await in_browser(browser, cancel_retrying_on_the_overview)

        def cancel_pending_on_its_page() -> None:
            browser.get(f"{base}/tasks/{later.task_id}")
            wait(browser).until(attribute_is("#task-state .badge", "data-state", "pending"))
            assert not shown(browser, ".toolbar button.retry")
            click(browser, ".toolbar button.cancel")
            wait(browser).until(attribute_is("#task-state .badge", "data-state", "cancelled"))
            assert "pending → cancelled" in find(browser, "#messages").text
            wait(browser).until(lambda d: shown(d, ".toolbar button.retry"))
            assert not shown(browser, ".toolbar button.cancel")
            screenshot(browser, screenshots / "task-cancelled.png")
            no_console_errors(browser)

        await in_browser(browser, cancel_pending_on_its_page)

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
            find(browser, f'tr.failed-row[data-task-id="{failed.task_id}"]')
            assert find(browser, "#read-only").text == "read-only"
            assert browser.find_elements(By.CSS_SELECTOR, "button.retry, button.cancel") == []
            screenshot(browser, screenshots / "overview-read-only.png")
            browser.get(f"{base}/tasks/{failed.task_id}")
            wait(browser).until(attribute_is("#task-state .badge", "data-state", "failed"))
            assert browser.find_elements(By.CSS_SELECTOR, "button.retry, button.cancel") == []
            no_console_errors(browser)

        await in_browser(browser, look)
