"""Old path of ``membus.integrations.langgraph``, kept for code written against earlier releases.

A thin re-export, not a copy: the LangGraph store lives in ``membus.integrations.langgraph``.
"""

from membus.integrations.langgraph import InvalidNamespace, MembusStore

__all__ = ["InvalidNamespace", "MembusStore"]
