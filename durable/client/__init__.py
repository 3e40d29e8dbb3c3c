"""The client layer: :class:`Client`, the SQL protocol one method per function, and what is built
on it alone (bulk recovery of failed work, the flow over time as series). ``CHANNEL_WORK`` and
``CHANNEL_DONE`` name the notifications ``Client.listen`` can follow."""

from durable.client.client import CHANNEL_DONE, CHANNEL_WORK, Client

__all__ = ["CHANNEL_DONE", "CHANNEL_WORK", "Client"]
