"""The client layer: :class:`Client`, the SQL protocol one method per function, and what is built
on it alone (bulk recovery of failed work)."""

from durable.client.client import Client

__all__ = ["Client"]
