"""Framework adapters over one memory port, in process or over HTTP: an MCP server and a
LangGraph ``BaseStore``. The ``mcp`` and ``langgraph`` extras are imported here only.

Owns: ``port`` (``MemoryPort``, ``AgentPort``, ``ClientPort``), ``mcp``, ``langgraph``.
May import: ``membus.service`` and the layers below it.
"""
