"""Old path of ``membus.integrations.mcp``, kept for code written against earlier releases.

A thin re-export, not a copy: the MCP server lives in ``membus.integrations.mcp``.
"""

from membus.integrations.mcp import (
    CHANGES_URI,
    MembusMCP,
    build_server,
    main,
    open_port,
    serve_stdio,
)

__all__ = ["CHANGES_URI", "MembusMCP", "build_server", "main", "open_port", "serve_stdio"]
