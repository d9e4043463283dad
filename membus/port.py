"""Old path of ``membus.integrations.port``, kept for code written against earlier releases.

A thin re-export, not a copy: the port lives in ``membus.integrations.port``.
"""

from membus.integrations.port import DEFAULT_WAIT_S, AgentPort, ClientPort, MemoryPort

__all__ = ["DEFAULT_WAIT_S", "AgentPort", "ClientPort", "MemoryPort"]
