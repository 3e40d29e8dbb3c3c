// The durable console: renders the pages' JSON, and re-reads it when the server's event stream
// (fed by LISTEN) says work arrived or tasks ended — no polling of the database on a timer.
// Every value goes into the page as text (textContent / Text nodes), never as HTML.
"use strict";

(() => {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
  const CSRF = meta("csrf-token");
  const READ_ONLY = meta("durable-read-only") === "1";
  const ROOT = meta("durable-root"); // where the console is mounted ("" at the server's root)
  const TASK_STATES = ["pending", "running", "sleeping", "completed", "failed", "cancelled"];
  const LIVE_STATES = ["pending", "running", "sleeping"];
  // without an event stream (too many open, or the server cannot LISTEN): refresh this often
  const FALLBACK_MS = 10000;
  // a live task's page re-reads itself this often too (progress sends no notification)
  const LIVE_TASK_MS = 2000;
  const url = (path) => `${ROOT}${path}`;

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
  const taskLink = (id) => el("a", { href: url(`/tasks/${id}`), class: "mono" }, id);
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

  // --- live: the event stream ----------------------------------------------------------------

  function setLive(ok, detail) {
    const live = document.getElementById("live");
    if (!live) return;
    live.className = ok ? "live ok" : "live down";
    const now = new Date().toISOString().slice(11, 19);
    live.textContent = ok ? `live · ${now}Z` : `disconnected · ${detail}`;
  }

  async function getJson(path) {
    const response = await fetch(url(path), { cache: "no-store", headers: { Accept: "application/json" } });
    const doc = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    return { ok: response.ok, status: response.status, doc };
  }

  async function postJson(path, body) {
    const response = await fetch(url(path), {
      method: "POST",
      cache: "no-store",
      headers: { "X-CSRF-Token": CSRF, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const doc = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    return { ok: response.ok, status: response.status, doc };
  }

  // a page's view: load() reads its JSON and renders it; refresh() asks for a load, at most one
  // at a time (a burst of events makes one more load, not one per event)
  function view(load) {
    let running = false;
    let again = false;
    async function refresh() {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        do {
          again = false;
          await load();
        } while (again);
      } finally {
        running = false;
      }
    }
    return refresh;
  }

  // re-run refresh() when the event stream says something changed (and on a slow timer when
  // there is no stream); onChange(event) may decline an event by returning false
  function follow(refresh, onChange) {
    let timer = null;
    const fallback = () => {
      clearInterval(timer);
      timer = setInterval(refresh, FALLBACK_MS);
    };
    if (!window.EventSource) {
      fallback();
      return;
    }
    const source = new EventSource(url("/api/events"));
    source.addEventListener("open", () => {
      clearInterval(timer);
      setLive(true);
      refresh();
    });
    source.addEventListener("change", (message) => {
      const change = JSON.parse(message.data);
      setLive(true);
      if (!onChange || onChange(change) !== false) refresh();
    });
    source.addEventListener("error", () => {
      setLive(false, "reconnecting");
      fallback();
    });
    window.addEventListener("pagehide", () => source.close());
  }

  async function render(path, draw, onError) {
    try {
      const { ok, status, doc } = await getJson(path);
      if (ok) {
        draw(doc);
        setLive(true);
      } else if (!(onError && onError(status, doc))) {
        setLive(false, doc.error || String(status));
      }
    } catch (error) {
      setLive(false, error.message || String(error));
    }
  }

  // --- actions ----------------------------------------------------------------------------------

  const messages = el("div", { id: "messages", class: "messages", role: "status" });

  function say(kind, line) {
    const note = el("div", { class: `message ${kind}` }, line);
    messages.prepend(note);
    while (messages.children.length > 4) messages.lastChild.remove();
  }

  const DONE = { retry: "Retried", cancel: "Cancelled", discard: "Discarded", replay: "Replayed" };
  const LABEL = { retry: "Retry", cancel: "Cancel", discard: "Discard", replay: "Replay" };
  let afterAction = () => {};

  async function act(taskId, action, button) {
    if (button) button.disabled = true;
    try {
      const { ok, status, doc } = await postJson(`/api/tasks/${encodeURIComponent(taskId)}/${action}`);
      const revived = doc.revived?.length
        ? `, and revived ${doc.revived.length} ${doc.revived.length === 1 ? "dependent" : "dependents"} its end had cancelled`
        : "";
      if (ok) say("ok", `${DONE[action]} task ${doc.task_id}: ${doc.before} → ${doc.after}${revived}`);
      else say("error", `${action} refused: ${doc.error || status}`);
    } catch (error) {
      say("error", `${action} failed: ${error.message || error}`);
    } finally {
      if (button) button.disabled = false;
      afterAction();
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
      LABEL[action],
    );
  }

  const seconds = (s) => {
    if (s === null || s === undefined) return "–";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  };

  function recoveryText(r) {
    const what = {
      retry_from_checkpoint:
        "a retry replays the checkpoints" + (r.last_checkpoint ? ` (last: ${r.last_checkpoint})` : ""),
      retry: "a retry starts from the beginning",
      none: "runs again by itself",
    }[r.recovery] ?? r.recovery;
    const likely = r.reason_class === "validation" ? "; validation: the same input will likely fail again" : "";
    return r.retryable ? what + likely : `${what}; not retried by itself${likely}`;
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

    const queueControl = (q) => {
      if (READ_ONLY || q.paused === null || q.paused === undefined) return null;
      const action = q.paused ? "resume" : "pause";
      return el(
        "button",
        {
          type: "button",
          class: `btn queue-${action}`,
          dataset: { queue: q.queue, action },
          onclick: async (event) => {
            event.currentTarget.disabled = true;
            const { ok, doc } = await postJson(`/api/queues/${encodeURIComponent(q.queue)}/${action}`);
            say(ok ? "ok" : "error", ok ? `Queue ${q.queue}: ${action}d` : `${action} refused: ${doc.error}`);
            refresh();
          },
        },
        q.paused ? "Resume" : "Pause",
      );
    };

    const renderQueues = (doc) =>
      table(
        [
          "queue",
          ...TASK_STATES.map((s) => ({
            label: LIVE_STATES.includes(s) ? s : `${s} 24 h`,
            class: "num",
          })),
          { label: "could start", class: "num" },
          { label: "oldest waits", class: "num" },
          { label: "completed / min", class: "num" },
          { label: "failed / min", class: "num" },
          ...(doc.queue_controls && !READ_ONLY ? [""] : []),
        ],
        doc.queues.map((q) =>
          el(
            "tr",
            { dataset: { queue: q.queue, paused: q.paused ? "1" : "0" } },
            el("td", { class: "queue" }, q.queue, q.paused ? el("span", { class: "badge paused" }, " paused") : null),
            TASK_STATES.map((s) =>
              el("td", { class: `num count ${q.counts[s] ? `has-${s}` : "zero"}`, dataset: { state: s } }, q.counts[s]),
            ),
            el("td", { class: "num", dataset: { metric: "available" } }, q.available),
            el("td", { class: "num", dataset: { metric: "oldest" } }, q.available ? seconds(q.oldest_available_s) : "–"),
            el("td", { class: "num throughput", dataset: { metric: "completed-per-min" } }, q.completed_per_min),
            el("td", { class: "num", dataset: { metric: "failed-per-min" } }, q.failed_per_min),
            doc.queue_controls && !READ_ONLY ? el("td", { class: "actions" }, queueControl(q)) : null,
          ),
        ),
        "No live work, and nothing ended in the last day.",
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
              el("a", { href: url(`/tasks/${r.task_id}`), class: "task-link" }, r.task_name),
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

    const refresh = view(() =>
      render("/api/overview", (doc) => {
        lastDoc = doc;
        queues.render([doc.queues, doc.queue_controls], () => renderQueues(doc));
        groups.render([doc.failure_groups, doc.failure_groups_total], () => renderGroups(doc));
        rerender();
      }),
    );
    afterAction = refresh;
    refresh();
    follow(refresh);
  }

  // --- a task -----------------------------------------------------------------------------------

  function taskPage(main, taskId) {
    const openTracebacks = new Set();
    const title = el("h1", {}, "Task");
    const idLine = el("div", { class: "mono subtitle" }, taskId);
    const buttons = READ_ONLY
      ? {}
      : Object.fromEntries(["retry", "replay", "cancel", "discard"].map((a) => [a, actionButton(taskId, a)]));
    for (const button of Object.values(buttons)) button.hidden = true;
    const toolbar = el("div", { class: "toolbar" }, Object.values(buttons));
    const fields = section("task-fields", "Task");
    const timeline = section("timeline", "Timeline", el("small", {}, " runs and steps, sleeps and waits"));
    const runs = section("runs", "Runs");
    const published = section("published-state", "Published state");
    const checkpoints = section("checkpoints", "Checkpoints");
    const notFound = el("p", { class: "message error", hidden: true });
    main.replaceChildren(
      el(
        "div",
        { class: "title-row" },
        el("div", {}, el("a", { href: url("/tasks"), class: "back" }, "← Tasks"), title, idLine),
        toolbar,
      ),
      messages,
      notFound,
      fields.node,
      timeline.node,
      runs.node,
      published.node,
      checkpoints.node,
    );

    const renderTimeline = (items) => {
      if (!items.length) return el("p", { class: "empty" }, "Nothing ran yet.");
      const startOf = (i) => new Date(i.start).getTime();
      const endOf = (i) => (i.end ? new Date(i.end).getTime() : Date.now());
      const t0 = Math.min(...items.map(startOf));
      const t1 = Math.max(...items.map(endOf), t0 + 1);
      const span = t1 - t0;
      return table(
        ["", "name", "start", "end", { label: "duration", class: "num" }, "span"],
        items.map((i) => {
          const bar = el("div", { class: `bar-fill kind-${i.kind} ${i.state ? `state-${i.state}` : ""}` });
          // positions through the CSSOM: the CSP allows no inline style attributes
          bar.style.marginLeft = `${((startOf(i) - t0) / span) * 100}%`;
          bar.style.width = `${Math.max(((endOf(i) - startOf(i)) / span) * 100, 0.5)}%`;
          return el(
            "tr",
            { class: `timeline-row kind-${i.kind}`, dataset: { kind: i.kind, name: i.name } },
            el("td", {}, el("span", { class: `badge kind-${i.kind}` }, i.kind)),
            el("td", { class: "mono" }, i.name, i.state ? el("span", { class: "muted" }, ` ${i.state}`) : null),
            el("td", {}, when(i.start)),
            el("td", {}, i.end ? when(i.end) : el("span", { class: "muted" }, "running")),
            el("td", { class: "num duration" }, seconds(i.duration_s)),
            el("td", { class: "span-cell" }, el("div", { class: "bar-track" }, bar)),
          );
        }),
        "",
      );
    };

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

    let live = true;
    const refresh = view(() =>
      render(
        `/api/tasks/${encodeURIComponent(taskId)}`,
        (doc) => {
          const t = doc.task;
          notFound.hidden = true;
          title.textContent = t.task_name;
          document.title = `${t.task_name} · ${t.state} · durable`;
          document.body.dataset.taskState = t.state;
          live = LIVE_STATES.includes(t.state);
          for (const [action, button] of Object.entries(buttons)) button.hidden = !doc.actions[action];
          fields.render(t, renderFields);
          timeline.render(doc.timeline, renderTimeline);
          runs.render(doc.runs, renderRuns);
          published.node.hidden = doc.published_state.length === 0; // shown once a task publishes
          published.render(doc.published_state, renderState);
          checkpoints.render(doc.checkpoints, renderCheckpoints);
        },
        (status, doc) => {
          if (status !== 404) return false;
          notFound.hidden = false;
          notFound.textContent = doc.error || "no such task";
          return true;
        },
      ),
    );
    afterAction = refresh;
    refresh();
    follow(refresh);
    // progress and checkpoints send no notification: a live task's page re-reads it (one task)
    setInterval(() => live && refresh(), LIVE_TASK_MS);
  }

  // --- the task browser ------------------------------------------------------------------------

  const FILTERS = ["state", "queue", "task_name", "tag", "since", "until", "search"];

  function tasksPage(main) {
    const params = new URLSearchParams(window.location.search);
    const filters = Object.fromEntries(FILTERS.map((k) => [k, params.get(k) || ""]));
    let before = null; // the page's cursor: null is the newest page
    let cursors = []; // the cursors of the pages before this one (for "newer")
    let lastPage = null;
    const selected = new Set();

    const input = (name, label, attrs) =>
      el(
        "label",
        { class: "field" },
        el("span", {}, label),
        el("input", { name, value: filters[name], autocomplete: "off", ...attrs }),
      );
    const stateSelect = el(
      "select",
      { name: "state" },
      el("option", { value: "" }, "any state"),
      TASK_STATES.map((st) => el("option", { value: st, selected: filters.state === st }, st)),
    );
    const form = el(
      "form",
      { id: "task-filters", class: "filters" },
      el("label", { class: "field" }, el("span", {}, "state"), stateSelect),
      input("queue", "queue", { placeholder: "any" }),
      input("task_name", "task", { placeholder: "any" }),
      input("tag", "tags", { placeholder: "a,b (all of them)" }),
      input("since", "spawned since", { placeholder: "ISO time or seconds ago" }),
      input("until", "until", { placeholder: "ISO time" }),
      input("search", "search", { placeholder: "task id, idempotency key or params JSON", class: "wide" }),
      el("button", { type: "submit", class: "btn primary", id: "apply-filters" }, "Filter"),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      for (const k of FILTERS) filters[k] = String(data.get(k) || "").trim();
      const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
      history.replaceState(null, "", `${window.location.pathname}${query.size ? `?${query}` : ""}`);
      before = null;
      cursors = [];
      selected.clear();
      refresh();
    });

    const list = section("task-list", "Tasks", el("small", {}, " newest first"));
    const newer = el("button", { type: "button", class: "btn", id: "newer-page" }, "← Newer");
    const older = el("button", { type: "button", class: "btn", id: "older-page" }, "Older →");
    const pager = el("div", { class: "pager" }, newer, older);
    newer.addEventListener("click", () => {
      before = cursors.pop() ?? null;
      refresh();
    });
    older.addEventListener("click", () => {
      if (!lastPage?.next_before) return;
      cursors.push(before);
      before = lastPage.next_before;
      refresh();
    });

    // bulk actions: a preview (dry run) first, then the action, at a rate
    const bulkAction = el(
      "select",
      { id: "bulk-action" },
      ["retry", "cancel", "discard", "replay"].map((a) => el("option", { value: a }, LABEL[a])),
    );
    const bulkScope = el(
      "select",
      { id: "bulk-scope" },
      el("option", { value: "selected" }, "the selected tasks"),
      el("option", { value: "filter" }, "every task the filter matches"),
    );
    const bulkRate = el("input", { id: "bulk-rate", type: "number", min: "0.1", step: "any", placeholder: "all at once" });
    const previewButton = el("button", { type: "button", class: "btn", id: "bulk-preview" }, "Preview");
    const applyButton = el("button", { type: "button", class: "btn retry", id: "bulk-apply", hidden: true }, "Apply");
    const preview = el("div", { id: "bulk-result", class: "bulk-result" });
    const bulkBar = READ_ONLY
      ? null
      : el(
          "section",
          { id: "bulk" },
          el("h2", {}, "Bulk action"),
          el(
            "div",
            { class: "bulk-bar" },
            bulkAction,
            el("span", {}, "on"),
            bulkScope,
            el("label", { class: "field inline" }, el("span", {}, "tasks / s"), bulkRate),
            previewButton,
            applyButton,
          ),
          preview,
        );

    const bulkRequest = (dryRun) => {
      const body = { action: bulkAction.value, dry_run: dryRun, limit: 1000 };
      if (bulkScope.value === "selected") body.task_ids = [...selected];
      else body.filter = Object.fromEntries(Object.entries(filters).filter(([, v]) => v));
      const rate = Number(bulkRate.value);
      if (!dryRun && rate > 0) body.rate = rate;
      return body;
    };
    for (const control of [bulkAction, bulkScope]) control.addEventListener("change", () => (applyButton.hidden = true));
    previewButton.addEventListener("click", async () => {
      applyButton.hidden = true;
      if (bulkScope.value === "selected" && !selected.size) {
        preview.replaceChildren(el("p", { class: "message error" }, "Select tasks first (the boxes in the list)."));
        return;
      }
      const { ok, doc } = await postJson("/api/bulk", bulkRequest(true));
      if (!ok) {
        preview.replaceChildren(el("p", { class: "message error" }, doc.error));
        return;
      }
      preview.replaceChildren(
        el(
          "p",
          { class: "preview-summary", dataset: { matched: doc.matched, applicable: doc.applicable } },
          `Dry run: ${doc.matched} matched, ${doc.applicable} would change — ${doc.what}. Nothing changed yet.`,
        ),
        table(
          ["task", "queue", "state", "created"],
          doc.tasks.map((t) =>
            el(
              "tr",
              { class: "preview-row", dataset: { taskId: t.task_id } },
              el("td", {}, el("a", { href: url(`/tasks/${t.task_id}`) }, t.task_name), el("div", { class: "mono small" }, t.task_id)),
              el("td", {}, t.queue),
              el("td", {}, stateBadge(t.state)),
              el("td", {}, when(t.created_at)),
            ),
          ),
          "Nothing to change.",
        ),
        ...(doc.dependents?.length
          ? [
              el(
                "p",
                { class: "preview-summary", dataset: { revived: doc.revived } },
                `and ${doc.revived} ${doc.revived === 1 ? "dependent" : "dependents"} their ends cancelled, revived with them (each waits for its dependencies again):`,
              ),
              table(
                ["task", "queue", "cancelled by"],
                doc.dependents.map((d) =>
                  el(
                    "tr",
                    { class: "preview-dependent", dataset: { taskId: d.task_id } },
                    el("td", {}, el("a", { href: url(`/tasks/${d.task_id}`) }, d.task_name), el("div", { class: "mono small" }, d.task_id)),
                    el("td", {}, d.queue),
                    el("td", { class: "mono small" }, d.dependency),
                  ),
                ),
                "",
              ),
            ]
          : []),
      );
      applyButton.hidden = !doc.applicable;
      applyButton.textContent = `${LABEL[doc.action]} ${doc.applicable} ${doc.applicable === 1 ? "task" : "tasks"}`;
    });
    applyButton.addEventListener("click", async () => {
      applyButton.disabled = true;
      try {
        const { ok, doc } = await postJson("/api/bulk", bulkRequest(false));
        if (!ok) {
          say("error", `${bulkAction.value} refused: ${doc.error}`);
          return;
        }
        say(
          doc.not_changed ? "error" : "ok",
          `${DONE[doc.action]} ${doc.changed} ${doc.changed === 1 ? "task" : "tasks"}; ${doc.not_changed} not changed`,
        );
        preview.replaceChildren();
        applyButton.hidden = true;
        selected.clear();
        refresh();
      } finally {
        applyButton.disabled = false;
      }
    });

    main.replaceChildren(el("h1", {}, "Tasks"), messages, el("section", {}, form), bulkBar, list.node, pager);

    const renderList = (doc) => {
      const all = el("input", {
        type: "checkbox",
        id: "select-page",
        title: "select every task of this page",
        onchange: (event) => {
          for (const t of doc.tasks) event.target.checked ? selected.add(t.task_id) : selected.delete(t.task_id);
          for (const box of document.querySelectorAll("input.select-task")) box.checked = event.target.checked;
        },
      });
      return table(
        [
          READ_ONLY ? "" : { label: all },
          "created",
          "task",
          "queue",
          "state",
          { label: "attempt", class: "num" },
          "tags",
          "last failure",
          { label: "progress", class: "num" },
        ],
        doc.tasks.map((t) =>
          el(
            "tr",
            { class: "task-row", dataset: { taskId: t.task_id, state: t.state, queue: t.queue } },
            el(
              "td",
              {},
              READ_ONLY
                ? null
                : el("input", {
                    type: "checkbox",
                    class: "select-task",
                    dataset: { taskId: t.task_id },
                    checked: selected.has(t.task_id),
                    onchange: (event) =>
                      event.target.checked ? selected.add(t.task_id) : selected.delete(t.task_id),
                  }),
            ),
            el("td", {}, when(t.created_at)),
            el(
              "td",
              {},
              el("a", { href: url(`/tasks/${t.task_id}`), class: "task-link" }, t.task_name),
              el("div", { class: "mono small" }, t.task_id),
              t.idempotency_key ? el("div", { class: "small" }, "key ", el("span", { class: "mono" }, t.idempotency_key)) : null,
            ),
            el("td", {}, t.queue),
            el("td", {}, stateBadge(t.state)),
            el("td", { class: "num" }, `${t.attempt}/${t.max_attempts}`),
            el("td", {}, t.tags.length ? el("span", { class: "tags" }, t.tags.map(tagChip)) : dash()),
            el("td", {}, t.failure_reason ? el("span", { class: "mono" }, t.error_type || t.failure_reason) : dash()),
            el("td", { class: "num" }, t.progress === null ? dash() : `${Math.round(t.progress)}%`),
          ),
        ),
        before ? "No older tasks." : "No task matches.",
      );
    };

    const query = () => {
      const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
      if (before) q.set("before", before);
      q.set("limit", "50");
      return `/api/tasks?${q}`;
    };
    const refresh = view(() =>
      render(
        query(),
        (doc) => {
          lastPage = doc;
          list.render([doc, [...selected]], () => renderList(doc));
          older.disabled = !doc.next_before;
          newer.disabled = before === null;
          document.body.dataset.pageCursor = before ?? "";
        },
        (status, doc) => {
          list.render(doc, () => el("p", { class: "message error" }, doc.error || String(status)));
          return true;
        },
      ),
    );
    afterAction = refresh;
    refresh();
    // the newest page follows what happens; an older page stays where it is
    follow(refresh, () => before === null);
  }

  // --- the flow over time -----------------------------------------------------------------------

  const PALETTE = ["#2f5bd3", "#1f9d55", "#d97706", "#b42318", "#7c3aed", "#0891b2", "#be185d", "#4b5563"];
  const CLASS_COLORS = {
    transport: "#d97706",
    validation: "#be185d",
    timeout: "#ca8a04",
    crash: "#b42318",
    exhausted: "#7c3aed",
    unknown: "#6b7385",
  };

  function flowPage(main) {
    const params = new URLSearchParams(window.location.search);
    let windowName = params.get("window") === "day" ? "day" : "hour";
    const charts = new Map();
    const switcher = el(
      "div",
      { class: "switch", id: "flow-window" },
      ["hour", "day"].map((w) =>
        el(
          "button",
          {
            type: "button",
            class: classNames("btn", w === windowName && "selected"),
            dataset: { window: w },
            onclick: () => {
              windowName = w;
              history.replaceState(null, "", `${window.location.pathname}?window=${w}`);
              for (const b of switcher.children) b.classList.toggle("selected", b.dataset.window === w);
              refresh();
            },
          },
          w === "hour" ? "Last hour" : "Last day",
        ),
      ),
    );
    const totals = el("p", { id: "flow-totals", class: "totals" });
    const panel = (id, title, note) =>
      el("section", { class: "chart-panel" }, el("h2", {}, title, note ? el("small", {}, ` ${note}`) : null), el("div", { id, class: "chart" }));
    main.replaceChildren(
      el("div", { class: "title-row" }, el("h1", {}, "Flow over time"), switcher),
      totals,
      panel("chart-completed", "Completed per step", "by queue"),
      panel("chart-failed", "Failed attempts per step", "by queue"),
      panel("chart-classes", "Failures by reason class"),
      panel("chart-lag", "Start lag", "from when a run could start to its start: p50, p95, p99"),
      panel("chart-run", "Run time", "start to end of completed and failed runs: p50, p95, p99"),
    );

    function draw(id, times, series, opts = {}) {
      const node = document.getElementById(id);
      const data = [times, ...series.map((s) => s.values)];
      const key = JSON.stringify([series.map((s) => s.label), data.length]);
      node.dataset.points = String(times.length);
      node.dataset.sum = String(series.reduce((sum, s) => sum + s.values.reduce((a, v) => a + (v || 0), 0), 0));
      const existing = charts.get(id);
      if (existing && existing.key === key) {
        existing.chart.setData(data);
        return;
      }
      if (existing) existing.chart.destroy();
      node.replaceChildren();
      if (!window.uPlot) {
        node.append(el("p", { class: "message error" }, "the charting library did not load"));
        return;
      }
      const chart = new window.uPlot(
        {
          width: Math.max(node.clientWidth, 320),
          height: 220,
          scales: { x: { time: true } },
          axes: [{}, { size: 60, values: opts.values }],
          series: [
            {},
            ...series.map((s, i) => ({
              label: s.label,
              stroke: s.color || PALETTE[i % PALETTE.length],
              width: 2,
              value: opts.value,
              spanGaps: opts.spanGaps,
            })),
          ],
        },
        data,
        node,
      );
      charts.set(id, { key, chart });
    }

    const perQueue = (byQueue) =>
      Object.entries(byQueue).map(([queue, values]) => ({ label: queue, values }));
    const secondsAxis = (u, splits) => splits.map((v) => (v === null ? "" : seconds(v)));
    const secondsValue = (u, v) => (v === null || v === undefined ? "–" : seconds(v));

    const refresh = view(() =>
      render(`/api/flow?window=${windowName}`, (doc) => {
        const t = doc.totals;
        totals.dataset.completed = t.completed;
        totals.dataset.failed = t.failed;
        totals.textContent =
          `In the last ${doc.window}: ${t.completed} completed, ${t.failed} failed attempts ` +
          `(${t.dead} failed for good), ${t.cancelled} cancelled — steps of ${doc.step_s / 60} min.`;
        draw("chart-completed", doc.times, perQueue(doc.completed));
        draw("chart-failed", doc.times, perQueue(doc.failed));
        draw(
          "chart-classes",
          doc.times,
          Object.entries(doc.failed_classes).map(([rc, values]) => ({ label: rc, values, color: CLASS_COLORS[rc] })),
        );
        const pcts = (by) => Object.entries(by).map(([p, values], i) => ({ label: p, values, color: PALETTE[i] }));
        draw("chart-lag", doc.times, pcts(doc.lag_s), { values: secondsAxis, value: secondsValue, spanGaps: true });
        draw("chart-run", doc.times, pcts(doc.run_s), { values: secondsAxis, value: secondsValue, spanGaps: true });
      }),
    );
    refresh();
    follow(refresh, (change) => change.done > 0); // the flow moves when runs end
  }

  // --- the workers ------------------------------------------------------------------------------

  function workersPage(main) {
    const list = section("workers", "Workers", el("small", {}, " alive, then those gone in the last hour"));
    main.replaceChildren(el("h1", {}, "Workers"), list.node);
    const renderWorkers = (doc) =>
      table(
        ["worker", "host", "queues", { label: "busy / slots", class: "num" }, { label: "claimed ahead", class: "num" }, { label: "holds", class: "num" }, "started", "last heartbeat", ""],
        doc.workers.map((w) =>
          el(
            "tr",
            { class: classNames("worker-row", !w.alive && "gone"), dataset: { workerId: w.worker_id, alive: w.alive ? "1" : "0" } },
            el("td", { class: "mono small" }, w.worker_id),
            el("td", {}, w.host ? `${w.host}${w.pid ? `:${w.pid}` : ""}` : dash()),
            el("td", {}, w.queues.length ? el("span", { class: "tags" }, w.queues.map(tagChip)) : dash()),
            el("td", { class: "num slots" }, w.concurrency === null ? dash() : `${w.busy ?? 0} / ${w.concurrency}`),
            el("td", { class: "num" }, w.claimed_ahead ?? dash()),
            el("td", { class: "num", dataset: { metric: "running" } }, w.running),
            el("td", {}, when(w.started_at)),
            el("td", {}, when(w.last_seen_at)),
            el("td", {}, w.alive ? stateBadge("running", "alive") : stateBadge("cancelled", w.stopped_at ? "stopped" : "lost")),
          ),
        ),
        "No worker in the last hour.",
      );
    const refresh = view(() => render("/api/workers", (doc) => list.render(doc, () => renderWorkers(doc))));
    refresh();
    follow(refresh);
    // heartbeats send no notification: re-read the (small) list now and then
    setInterval(refresh, FALLBACK_MS);
  }

  // --- start ------------------------------------------------------------------------------------

  const main = document.getElementById("main");
  const page = document.body.dataset.page;
  if (page === "task") taskPage(main, document.body.dataset.taskId);
  else if (page === "tasks") tasksPage(main);
  else if (page === "flow") flowPage(main);
  else if (page === "workers") workersPage(main);
  else overviewPage(main);
})();
