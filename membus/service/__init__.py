"""The bus over HTTP: the FastAPI service (one API key per agent identity), its limits,
metrics and SSE change feed, the wire format, and ``membus.Client`` that speaks it.

Owns: ``app``, ``auth``, ``limits``, ``metrics``, ``sse``, ``wire``, ``client``.
May import: ``membus.runtime`` and the layers below it. FastAPI and uvicorn are imported here
only (and by ``membus.console``, which mounts on the app built here).
"""
