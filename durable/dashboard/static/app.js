// The durable dashboard: polls the page's JSON every second and renders it.
// Every value goes into the page as text (textContent / Text nodes), never as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
  const CSRF = meta("csrf-token");
  const READ_ONLY = meta("durable-read-only") === "1";
  const TASK_STATES = ["pending", "running", "sleeping", "completed", "failed", "cancelled"];

  // --- DOM helpers ------------------------------------------------------------------------------

  // el("td", {class: "num"}, "text", childNode, ...): children are nodes or text, never HTML
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const classNames = (...names) => names.filter(Boolean).join(" ");
  const tagChip = (tag) => el("span", { class: "tag" }, tag);
  const taskLink = (id) => el("a", { href: `/tasks/${id}`, class: "mono" }, id);
  const badge = (kind, value, label) =>
    el("span", { class: `badge ${kind}-${value}`, dataset: { [kind]: value } }, label ?? value);
  const stateBadge = (state, label) => badge("state", state, label);
  const reasonBadge = (reasonClass) => badge("reason", reasonClass);
  const dash = () => el("span", { class: "none" }, "–");
  const text = (value) => (value === null || value === undefined || value === "" ? dash() : value);

  function when(iso) {
    if (!iso) return dash();
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    const utc = date.toISOString();
    return el("time", { datetime: iso, title: iso }, `${utc.slice(0, 10)} ${utc.slice(11, 19)}Z`);
  }

  function table(headers, rows, empty) {
    if (!rows.length) return el("p", { class: "empty" }, empty);
    return el(
      "table",
      {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.class }, h.label ?? h)))),
      el("tbody", {}, rows),
    );
  }

  // a section whose body is rebuilt only when its data changed (keeps focus, hover and clicks)
  function section(id, title, extra) {
    const body = el("div", { class: "section-body", id: `${id}-body` });
    const node = el("section", { id }, el("h2", {}, title, extra ?? null), body);
    let last = null;
    return {
      node,
      render(data, build) {
        const key = JSON.stringify(data);
        if (key === last) return;
        last = key;
        body.replaceChildren(build(data));
      },
    };
  }

  // --- live polling -----------------------------------------------------------------------------

  let wakeUp = () => {};
  const refreshNow = () => wakeUp();
  const pause = (ms) =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  function setLive(ok, detail) {
    const live = document.getElementById("live");
    if (!live) return;
    live.className = ok ? "live ok" : "live down";
    const now = new Date().toISOString().slice(11, 19);
    live.textContent = ok ? `live · ${now}Z` : `disconnected · ${detail}`;
  }

  async function getJson(url) {
    const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    const doc = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    return { ok: response.ok, status: response.status, doc };
  }

  async function poll(url, render, onError) {
    for (;;) {
      try {
        const { ok, status, doc } = await getJson(url);
        if (ok) {
          render(doc);
          setLive(true);
        } else if (onError && onError(status, doc)) {
          setLive(true);
        } else {
          setLive(false, doc.error || String(status));
        }
      } catch (error) {
        setLive(false, error.message || String(error));
      }
      await pause(POLL_MS);
    }
  }

  // --- actions ----------------------------------------------------------------------------------

  const messages = el("div", { id: "messages", class: "messages", role: "status" });

  function say(kind, line) {
    const note = el("div", { class: `message ${kind}` }, line);
    messages.prepend(note);
    while (messages.children.length > 4) messages.lastChild.remove();
  }

  async function act(taskId, action, button) {
    if (button) button.disabled = true;
    try {
      const response = await fetch(`/api/tasks/${encodeURIComponent(taskId)}/${action}`, {
        method: "POST",
        cache: "no-store",
        headers: { "X-CSRF-Token": CSRF },
      });
      const doc = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
      if (response.ok) {
        const revived = doc.revived?.length
          ? `, and revived ${doc.revived.length} ${doc.revived.length === 1 ? "dependent" : "dependents"} its end had cancelled`
          : "";
        say("ok", `${action === "retry" ? "Retried" : "Cancelled"} task ${doc.task_id}: ${doc.before} → ${doc.after}${revived}`);
      } else {
        say("error", `${action} refused: ${doc.error || response.status}`);
      }
    } catch (error) {
      say("error", `${action} failed: ${error.message || error}`);
    } finally {
      if (button) button.disabled = false;
      refreshNow();
    }
  }

  function actionButton(taskId, action, extraClass) {
    return el(
      "button",
      {
        type: "button",
        class: `btn ${action} ${extraClass ?? ""}`.trim(),
        dataset: { action, taskId },
        onclick: (event) => act(taskId, action, event.currentTarget),
      },
      action === "retry" ? "Retry" : "Cancel",
    );
  }

  function recoveryText(r) {
    const what = {
      retry_from_checkpoint:
        "a retry replays the checkpoints" + (r.last_checkpoint ? ` (last: ${r.last_checkpoint})` : ""),
      retry: "a retry starts from the beginning",
      none: "runs again by itself",
    }[r.recovery] ?? r.recovery;
    return r.retryable ? what : `${what}; ${r.reason_class}: the same input will likely fail again`;
  }

  // --- the overview -----------------------------------------------------------------------------

  function overviewPage(main) {
    let classFilter = null;
    let lastDoc = null;
    const queues = section("queues", "Queues");
    const classes = section("reason-classes", "Failed work by reason class");
    const groups = section("failure-groups", "Failure groups", el("small", {}, " reason × error type × task"));
    const failed = section("failed-work", "Recent failed work");
    main.replaceChildren(messages, queues.node, classes.node, groups.node, failed.node);

    const renderQueues = (doc) =>
      table(
        [
          "queue",
          ...TASK_STATES.map((s) => ({ label: s, class: "num" })),
          { label: "total", class: "num" },
          { label: "completed / min", class: "num" },
          { label: "failed / min", class: "num" },
        ],
        doc.queues.map((q) =>
          el(
            "tr",
            { dataset: { queue: q.queue } },
            el("td", { class: "queue" }, q.queue),
            TASK_STATES.map((s) =>
              el("td", { class: `num count ${q.counts[s] ? `has-${s}` : "zero"}`, dataset: { state: s } }, q.counts[s]),
            ),
            el("td", { class: "num" }, q.total),
            el("td", { class: "num throughput", dataset: { metric: "completed-per-min" } }, q.completed_per_min),
            el("td", { class: "num", dataset: { metric: "failed-per-min" } }, q.failed_per_min),
          ),
        ),
        "No tasks yet.",
      );

    const renderClasses = (doc) => {
      const total = doc.reason_classes.reduce((sum, rc) => sum + rc.count, 0);
      const chips = doc.reason_classes.map((rc) =>
        el(
          "button",
          {
            type: "button",
            class: classNames(
              "chip",
              `reason-${rc.reason_class}`,
              !rc.count && "zero",
              classFilter === rc.reason_class && "selected",
            ),
            dataset: { reasonClass: rc.reason_class, count: rc.count },
            title: rc.count ? "show only this class below (click again for all)" : "no failed work",
            onclick: () => {
              classFilter = classFilter === rc.reason_class ? null : rc.reason_class;
              rerender();
            },
          },
          el("span", { class: "chip-label" }, rc.reason_class),
          el("span", { class: "chip-count" }, rc.count),
        ),
      );
      return el(
        "div",
        {},
        el("div", { class: "chips" }, chips),
        el(
          "p",
          { class: "hint" },
          total
            ? `${total} ${total === 1 ? "task" : "tasks"} failed or retrying in all ` +
                "(click a class to filter the list below)."
            : "No failed work.",
        ),
      );
    };

    const renderGroups = (doc) => {
      const list = table(
        ["class", "reason", "error type", "task", "queue", { label: "count", class: "num" }, "first seen", "last seen"],
        doc.failure_groups.map((g) =>
          el(
            "tr",
            {},
            el("td", {}, reasonBadge(g.reason_class)),
            el("td", {}, g.failure_reason),
            el("td", { class: "mono" }, text(g.error_type)),
            el("td", {}, g.task_name),
            el("td", {}, g.queue),
            el("td", { class: "num" }, g.count),
            el("td", {}, when(g.first_seen)),
            el("td", {}, when(g.last_seen)),
          ),
        ),
        "No failures.",
      );
      const shown = doc.failure_groups.length;
      const more =
        doc.failure_groups_total > shown
          ? el("p", { class: "hint" }, `The ${shown} most frequent of ${doc.failure_groups_total} groups are shown.`)
          : null;
      return el("div", {}, list, more);
    };

    const renderFailed = (data) => {
      const rows = data.rows.filter((r) => !data.filter || r.reason_class === data.filter);
      const caption = data.filter
        ? el("p", { class: "hint" }, `Showing ${data.filter} only — click the chip again to show all.`)
        : null;
      const list = table(
        ["failed at", "task", "queue", "state", "attempt", "class", "reason", "error", ...(READ_ONLY ? [] : [""])],
        rows.map((r) =>
          el(
            "tr",
            { class: "failed-row", dataset: { taskId: r.task_id, state: r.state, reasonClass: r.reason_class } },
            el("td", {}, when(r.failed_at)),
            el(
              "td",
              {},
              el("a", { href: `/tasks/${r.task_id}`, class: "task-link" }, r.task_name),
              el("div", { class: "mono small" }, r.task_id),
            ),
            el("td", {}, r.queue),
            el("td", {}, r.state === "failed" ? stateBadge("failed", "dead") : stateBadge("retrying")),
            el("td", { class: "num" }, `${r.attempt}/${r.max_attempts}`),
            el("td", {}, reasonBadge(r.reason_class)),
            el("td", {}, r.failure_reason),
            el(
              "td",
              { class: "error" },
              r.error_type ? el("span", { class: "mono" }, r.error_type) : null,
              r.error_message ? ` ${r.error_message}` : null,
              el("div", { class: "muted small" }, recoveryText(r)),
            ),
            READ_ONLY
              ? null
              : el(
                  "td",
                  { class: "actions" },
                  r.can_retry ? actionButton(r.task_id, "retry") : null,
                  r.can_cancel ? actionButton(r.task_id, "cancel") : null,
                ),
          ),
        ),
        data.filter ? `No failed work of class ${data.filter} in this list.` : "No failed work.",
      );
      const more =
        data.rows.length >= data.limit ? el("p", { class: "hint" }, `The newest ${data.limit} are shown.`) : null;
      return el("div", {}, caption, list, more);
    };

    function rerender() {
      if (!lastDoc) return;
      classes.render({ rc: lastDoc.reason_classes, filter: classFilter }, () => renderClasses(lastDoc));
      failed.render({ rows: lastDoc.failed_work, filter: classFilter, limit: lastDoc.failed_work_limit }, renderFailed);
    }

    poll("/api/overview", (doc) => {
      lastDoc = doc;
      queues.render(doc.queues, () => renderQueues(doc));
      groups.render([doc.failure_groups, doc.failure_groups_total], () => renderGroups(doc));
      rerender();
    });
  }

  // --- a task -----------------------------------------------------------------------------------

  function taskPage(main, taskId) {
    const openTracebacks = new Set();
    const title = el("h1", {}, "Task");
    const idLine = el("div", { class: "mono subtitle" }, taskId);
    const retry = READ_ONLY ? null : actionButton(taskId, "retry");
    const cancel = READ_ONLY ? null : actionButton(taskId, "cancel");
    for (const button of [retry, cancel]) if (button) button.hidden = true;
    const toolbar = el("div", { class: "toolbar" }, retry, cancel);
    const fields = section("task-fields", "Task");
    const runs = section("runs", "Runs");
    const published = section("published-state", "Published state");
    const checkpoints = section("checkpoints", "Checkpoints");
    const notFound = el("p", { class: "message error", hidden: true });
    main.replaceChildren(
      el(
        "div",
        { class: "title-row" },
        el("div", {}, el("a", { href: "/", class: "back" }, "← Overview"), title, idLine),
        toolbar,
      ),
      messages,
      notFound,
      fields.node,
      runs.node,
      published.node,
      checkpoints.node,
    );

    const row = (label, value) => el("tr", {}, el("th", {}, label), el("td", {}, value));
    const pre = (value, cls) => el("pre", { class: cls ?? "value" }, value);

    const renderFields = (t) =>
      el(
        "table",
        { class: "fields" },
        el(
          "tbody",
          {},
          row("state", el("span", { id: "task-state" }, stateBadge(t.state))),
          row("attempt", el("span", { id: "task-attempt" }, `${t.attempt}/${t.max_attempts}`)),
          row("queue", t.queue),
          row("created", when(t.created_at)),
          t.scheduled_at && t.scheduled_at !== t.created_at ? row("scheduled", when(t.scheduled_at)) : null,
          t.idempotency_key ? row("idempotency key", el("span", { class: "mono" }, t.idempotency_key)) : null,
          row("tags", t.tags.length ? el("span", { class: "tags" }, t.tags.map(tagChip)) : dash()),
          row("params", pre(t.params)),
          t.headers ? row("headers", pre(t.headers)) : null,
          t.result !== null ? row("result", pre(t.result)) : null,
          row("progress", renderProgress(t.progress)),
          t.failure && t.state !== "completed"
            ? row(
                t.state === "failed" || t.state === "cancelled" ? "failure" : "last failure",
                el("span", {}, el("span", { class: "mono" }, t.failure.reason), ` ${t.failure.message}`),
              )
            : null,
          t.parent_task_id ? row("parent", taskLink(t.parent_task_id)) : null,
          t.depends_on.length ? row("depends on", t.depends_on.map((id) => el("div", {}, taskLink(id)))) : null,
          t.waiting_for.length ? row("waiting for", t.waiting_for.map((w) => pre(w))) : null,
          t.batch_ids.length ? row("batches", t.batch_ids.map((id) => el("div", { class: "mono" }, id))) : null,
        ),
      );

    const renderState = (list) =>
      table(
        ["key", "value"],
        list.map((s) =>
          el("tr", { dataset: { key: s.key } },
            el("td", { class: "mono" }, s.key),
            el("td", {}, pre(s.value, "value small")),
          ),
        ),
        "Nothing published.",
      );

    function renderProgress(p) {
      if (!p) return el("span", { id: "task-progress" }, dash());
      const pct = Math.max(0, Math.min(100, Number(p.pct) || 0));
      const fill = el("div", { class: "progress-fill" });
      // the bar's width goes through the CSSOM: the CSP allows no inline style attributes
      fill.style.width = `${pct}%`;
      return el(
        "div",
        { class: "progress-block", id: "task-progress" },
        el("div", { class: "progress", role: "progressbar", "aria-valuenow": pct }, fill),
        el(
          "div",
          { class: "progress-text" },
          el("strong", { id: "progress-pct" }, `${pct}%`),
          p.detail ? ` ${p.detail}` : "",
          p.at ? el("span", { class: "muted" }, " · ", when(p.at)) : null,
        ),
      );
    }

    const renderRuns = (list) =>
      table(
        ["attempt", "state", "worker", "version", "started", "finished", "reason", "error"],
        list.flatMap((r) => {
          const error = [
            r.error_type ? el("span", { class: "mono" }, r.error_type) : null,
            r.error_message ? ` ${r.error_message}` : null,
            r.reason_class ? el("span", {}, " ", reasonBadge(r.reason_class)) : null,
          ];
          const rows = [
            el(
              "tr",
              {
                class: classNames("run", r.live && "live-run", r.traceback && "has-traceback"),
                dataset: { runId: r.run_id, state: r.state },
              },
              el("td", { class: "num" }, r.attempt),
              el("td", {}, stateBadge(r.state)),
              el("td", { class: "mono small" }, text(r.worker)),
              el("td", { class: "mono small run-version" }, text(r.code_version)),
              el("td", {}, when(r.started_at)),
              el("td", {}, when(r.finished_at)),
              el("td", {}, text(r.failure_reason)),
              el("td", { class: "error" }, r.error_type || r.error_message ? error : dash()),
            ),
          ];
          if (r.traceback) {
            // a full-width row under the run; whether it is open survives the re-renders
            const details = el(
              "details",
              { class: "traceback", open: openTracebacks.has(r.run_id) },
              el("summary", {}, `traceback of attempt ${r.attempt}`),
              el("pre", {}, r.traceback),
            );
            details.addEventListener("toggle", () => {
              if (details.open) openTracebacks.add(r.run_id);
              else openTracebacks.delete(r.run_id);
            });
            rows.push(el("tr", { class: "traceback-row" }, el("td", { colspan: 8 }, details)));
          }
          return rows;
        }),
        "No runs.",
      );

    const renderCheckpoints = (list) =>
      table(
        ["step", "value", "run", "created"],
        list.map((c) =>
          el("tr", { dataset: { step: c.step } },
            el("td", { class: "mono" }, c.step),
            el("td", {}, pre(c.value, "value small")),
            el("td", { class: "mono small" }, c.run_id),
            el("td", {}, when(c.created_at)),
          ),
        ),
        "No checkpoints.",
      );

    poll(
      `/api/tasks/${encodeURIComponent(taskId)}`,
      (doc) => {
        const t = doc.task;
        notFound.hidden = true;
        title.textContent = t.task_name;
        document.title = `${t.task_name} · ${t.state} · durable`;
        document.body.dataset.taskState = t.state;
        if (retry) retry.hidden = !doc.actions.retry;
        if (cancel) cancel.hidden = !doc.actions.cancel;
        fields.render(t, renderFields);
        runs.render(doc.runs, renderRuns);
        published.node.hidden = doc.published_state.length === 0;  // shown once a task publishes
        published.render(doc.published_state, renderState);
        checkpoints.render(doc.checkpoints, renderCheckpoints);
      },
      (status, doc) => {
        if (status !== 404) return false;
        notFound.hidden = false;
        notFound.textContent = doc.error || "no such task";
        return true;
      },
    );
  }

  // --- start ------------------------------------------------------------------------------------

  const main = document.getElementById("main");
  if (document.body.dataset.page === "task") taskPage(main, document.body.dataset.taskId);
  else overviewPage(main);
})();
