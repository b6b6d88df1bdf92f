"""What a Python rank imports to talk to its node agent.

``connect()`` is the async client (:mod:`pm.client.pmi`);
``pm.client.sync.connect()`` is the blocking facade (:mod:`pm.client.sync`).
"""

from pm.client._core import RequestFailed
from pm.client.pmi import PMIClient, connect

__all__ = ["PMIClient", "RequestFailed", "connect"]
