"""A running bus: ``membus.open()`` assembles Redis, the store, the gate and the writers; the
embedded default starts its own redis-server; writer processes; the blocking facade.

Owns: ``host`` (``open``, ``connect``, ``run_writers``), ``embedded`` (the redis-server child),
``writers`` and ``writer_main`` (writer processes and their entry point), ``signals``
(graceful stop), ``sync`` (``open_sync``, ``SyncBus``, ``SyncAgent``).
May import: ``membus.bus`` and the layers below it.
"""
