"""Helpers the suite shares: one place for each, imported as ``from support.database import ...``.

- :mod:`support.database` — DSNs, plain asyncpg connections, row counts, a side pool.

How it is found: under pytest, ``tests/`` is on ``sys.path`` (pytest puts the folder of
``tests/conftest.py`` there, as for every conftest outside a package). Shared fixtures stay in
``tests/conftest.py``.
"""
