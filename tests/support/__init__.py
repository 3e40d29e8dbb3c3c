"""Helpers the suite shares: one place for each, imported as ``from support.waiting import ...``.

- :mod:`support.database` — DSNs, plain asyncpg connections, row counts, a side pool.
- :mod:`support.waiting` — wait until a probe answers, a condition holds, a task is in a state,
  always against a deadline (never a bare long sleep).
- :mod:`support.processes` — a worker app as a subprocess: start it with its DSN and options,
  read its JSON log events, wait for one, SIGKILL / SIGTERM it, reap it.
- :mod:`support.worker_script` — the other side: what a test app runs as a worker script.
- :mod:`support.side_tables` — the side tables the worker apps' tasks record their executions in,
  and the reads the tests make of them.
- :mod:`support.in_process` — a worker of an app in the test's own event loop.
- :mod:`support.cli` — the ``durable`` command in subprocesses.
- :mod:`support.http` — the console on a free port, raw HTTP requests, its event stream.
- :mod:`support.browser` — the console in headless Chromium: waits, clicks, screenshots.

How it is found: under pytest, ``tests/`` is on ``sys.path`` (pytest puts the folder of
``tests/conftest.py`` there, as for every conftest outside a package). A test app run as a script
(``python worker_app.py``, cwd = its folder) puts ``tests/`` there itself before it imports
``support``. Shared fixtures stay in ``tests/conftest.py``.
"""
