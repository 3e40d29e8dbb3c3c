"""``python -m durable``: the same as the ``durable`` command."""

import sys

from durable.cli import main

if __name__ == "__main__":
    sys.exit(main())
