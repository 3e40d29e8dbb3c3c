"""The console's newer pages in a real headless Chromium: the overview's counts following the event
stream and its queue controls (pause, resume), the task browser (filter, search, pages, a bulk
retry with its preview), the flow charts with data, the workers page and a task's timeline.
Screenshots go where ``test_dashboard.py``'s go.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_app import QUEUE, Upstream, make_app, running, wait_task
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select
from support.browser import (
    attribute_is,
    click,
    find,
    in_browser,
    no_console_errors,
    screenshot,
    wait,
)
from support.waiting import wait_all_finished

from durable import TaskState

pytestmark = pytest.mark.anyio

#: A queue no worker serves: what is spawned there stays pending.
IDLE = "idle"


def _count(queue: str, state: str) -> str:
    return f'tr[data-queue="{queue}"] td[data-state="{state}"]'


async def test_the_overview_counts_follow_the_event_stream_and_queues_pause(
    dsn: str, browser: WebDriver, screenshots: Path
) -> None:
    app = make_app(dsn, Upstream())
    async with running(app) as base:
        await app.spawn("send_digest", {"n": 1}, queue=IDLE)

        def opened() -> None:
            browser.get(f"{base}/")
            wait(browser).until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
            find(browser, _count(IDLE, "pending"))
            wait(browser).until(
                ec.text_to_be_present_in_element((By.CSS_SELECTOR, _count(IDLE, "pending")), "1")
            )
            browser.execute_script("window.durableTestMarker = 'not reloaded'")

        await in_browser(browser, opened)
        for n in range(2, 4):
            await app.spawn("send_digest", {"n": n}, queue=IDLE)  # notifies durable_work

        def counted() -> None:
            cell = (By.CSS_SELECTOR, _count(IDLE, "pending"))
            wait(browser).until(ec.text_to_be_present_in_element(cell, "3"))
            assert browser.execute_script("return window.durableTestMarker") == "not reloaded"
            assert find(browser, f'tr[data-queue="{IDLE}"] td[data-metric="available"]').text == "3"
            screenshot(browser, screenshots / "overview-live.png")
            no_console_errors(browser)

        await in_browser(browser, counted)

        def pause() -> None:
            click(browser, f'tr[data-queue="{IDLE}"] button.queue-pause')
            wait(browser).until(attribute_is(f'tr[data-queue="{IDLE}"]', "data-paused", "1"))
            assert "paused" in find(browser, f'tr[data-queue="{IDLE}"] td.queue').text
            assert find(browser, f'tr[data-queue="{IDLE}"] button.queue-resume').text == "Resume"
            screenshot(browser, screenshots / "overview-paused.png")

        await in_browser(browser, pause)
        assert [p.queue for p in await app.client.list_paused_queues()] == [IDLE]

        def resume() -> None:
            click(browser, f'tr[data-queue="{IDLE}"] button.queue-resume')
            wait(browser).until(attribute_is(f'tr[data-queue="{IDLE}"]', "data-paused", "0"))
            no_console_errors(browser)

        await in_browser(browser, resume)
        assert await app.client.list_paused_queues() == []


async def test_the_task_browser_filters_searches_pages_and_retries_in_bulk(
    dsn: str, browser: WebDriver, screenshots: Path
) -> None:
    upstream = Upstream()
    app = make_app(dsn, upstream)
    async with running(app) as base:
        backlog = await app.client.spawn_many(IDLE, [("send_digest", {"i": i}) for i in range(55)])
        failed = [
            await app.spawn("fetch_feed", {"url": f"https://example.com/{i}"}) for i in range(3)
        ]
        for handle in failed:
            await wait_task(app, handle.task_id, TaskState.FAILED)
        newest_idle = backlog[-1].task_id

        def browse() -> None:
            browser.get(f"{base}/tasks")
            rows = "#task-list tr.task-row"
            wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 50)
            # newest first: the three failed tasks came last
            first = browser.find_elements(By.CSS_SELECTOR, rows)[0]
            assert first.get_attribute("data-task-id") == str(failed[-1].task_id)
            assert first.get_attribute("data-state") == "failed"
            screenshot(browser, screenshots / "tasks.png")
            click(browser, "#older-page")
            wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 8)
            assert find(browser, "#older-page").get_attribute("disabled") is not None
            click(browser, "#newer-page")
            wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 50)
            # search by task id
            box = find(browser, 'input[name="search"]')
            box.send_keys(str(newest_idle))
            click(browser, "#apply-filters")
            wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 1)
            assert find(browser, rows).get_attribute("data-task-id") == str(newest_idle)
            assert "search=" in browser.current_url
            # filter: failed tasks of one task name
            box.clear()
            Select(find(browser, 'select[name="state"]')).select_by_value("failed")
            find(browser, 'input[name="task_name"]').send_keys("fetch_feed")
            click(browser, "#apply-filters")
            wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 3)
            assert {
                r.get_attribute("data-state") for r in browser.find_elements(By.CSS_SELECTOR, rows)
            } == {"failed"}
            # a bulk retry of what the filter matches: the preview first, changing nothing
            Select(find(browser, "#bulk-action")).select_by_value("retry")
            Select(find(browser, "#bulk-scope")).select_by_value("filter")
            find(browser, "#bulk-rate").send_keys("20")
            click(browser, "#bulk-preview")
            summary = find(browser, "#bulk-result .preview-summary")
            assert summary.get_attribute("data-matched") == "3"
            assert summary.get_attribute("data-applicable") == "3"
            assert "Dry run" in summary.text
            assert len(browser.find_elements(By.CSS_SELECTOR, "#bulk-result tr.preview-row")) == 3
            assert find(browser, "#bulk-apply").text == "Retry 3 tasks"
            screenshot(browser, screenshots / "tasks-bulk-preview.png")

        await in_browser(browser, browse)
        # the preview changed nothing
        for handle in failed:
            assert (await app.get_task(handle.task_id)).state is TaskState.FAILED
        upstream.up = True  # the retried runs get through

        def retry_them() -> None:
            click(browser, "#bulk-apply")
            wait(browser).until(
                ec.text_to_be_present_in_element((By.ID, "messages"), "Retried 3 tasks")
            )
            # the list follows the event stream: the failed tasks leave the filter's page
            wait(browser).until(
                ec.text_to_be_present_in_element(
                    (By.CSS_SELECTOR, "#task-list"), "No task matches."
                )
            )
            screenshot(browser, screenshots / "tasks-bulk-retried.png")
            no_console_errors(browser)

        await in_browser(browser, retry_them)
        records = await wait_all_finished(app.client, [h.task_id for h in failed], timeout=15)
    assert {r.state for r in records} == {TaskState.COMPLETED}


async def test_the_flow_charts_render_the_runs_that_ended(
    dsn: str, browser: WebDriver, screenshots: Path
) -> None:
    app = make_app(dsn, Upstream())
    async with running(app) as base:
        done = [await app.spawn("send_digest", {"n": n}) for n in range(6)]
        dead = await app.spawn("fetch_feed", {"url": "https://example.com/down"})
        await wait_all_finished(app.client, [h.task_id for h in [*done, dead]], timeout=15)

        def charts() -> None:
            browser.get(f"{base}/flow")
            totals = find(browser, "#flow-totals")
            wait(browser).until(attribute_is("#flow-totals", "data-completed", "6"))
            assert totals.get_attribute("data-failed") == "1"
            assert "6 completed" in totals.text
            for chart in ("completed", "failed", "classes", "lag", "run"):
                find(browser, f"#chart-{chart} canvas")  # uPlot drew it
            assert find(browser, "#chart-completed").get_attribute("data-sum") == "6"
            assert find(browser, "#chart-classes").get_attribute("data-sum") == "1"
            legend = find(browser, "#chart-completed .u-legend").text
            assert QUEUE in legend
            # the canvas has ink on it: the line of the six completed runs
            inked = browser.execute_script(
                "const c = document.querySelector('#chart-completed canvas');"
                "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;"
            )
            assert inked > 500
            screenshot(browser, screenshots / "flow-hour.png")
            click(browser, '#flow-window button[data-window="day"]')
            wait(browser).until(lambda d: "window=day" in d.current_url)
            wait(browser).until(
                ec.text_to_be_present_in_element((By.ID, "flow-totals"), "last day")
            )
            screenshot(browser, screenshots / "flow-day.png")
            no_console_errors(browser)

        await in_browser(browser, charts)


async def test_the_workers_page_and_a_task_timeline(
    dsn: str, browser: WebDriver, screenshots: Path
) -> None:
    app = make_app(dsn, Upstream())
    async with running(app) as base:
        handle = await app.spawn("nap", None)
        await wait_task(app, handle.task_id, TaskState.COMPLETED)
        worker_id = (await app.get_task(handle.task_id)).runs[-1].claimed_by

        def workers() -> None:
            browser.get(f"{base}/workers")
            row = find(browser, f'tr.worker-row[data-worker-id="{worker_id}"]')
            assert row.get_attribute("data-alive") == "1"
            assert find(browser, f'tr[data-worker-id="{worker_id}"] td.slots').text.endswith("/ 4")
            assert QUEUE in row.text
            screenshot(browser, screenshots / "workers.png")
            no_console_errors(browser)

        await in_browser(browser, workers)

        def timeline() -> None:
            browser.get(f"{base}/tasks/{handle.task_id}")
            find(browser, '#timeline tr[data-kind="sleep"][data-name="rest"]')
            kinds = [
                (row.get_attribute("data-kind"), row.get_attribute("data-name"))
                for row in browser.find_elements(By.CSS_SELECTOR, "#timeline tr.timeline-row")
            ]
            assert kinds == [
                ("run", "attempt 1"),
                ("step", "prepare"),
                ("sleep", "rest"),
                ("run", "attempt 1"),
                ("step", "finish"),
            ]
            rest = find(browser, '#timeline tr[data-name="rest"] td.duration').text
            assert rest in ("300 ms", "0.3 s"), rest
            screenshot(browser, screenshots / "task-timeline.png")
            no_console_errors(browser)

        await in_browser(browser, timeline)
