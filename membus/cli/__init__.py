"""The ``membus`` command line. The only package, with the compose files, that reads
``MEMBUS_*`` variables (``settings``); nothing imports it.

Owns: ``app`` (the Typer app and ``main``), ``settings``, ``context`` (options, output mode,
error handling), ``target`` (which bus a command gets), ``output``, ``input``, and the commands:
``feed`` (publish, recall, tail), ``ops`` (worker, stats, optimize, dlq), ``admin`` (audit,
forget, policy), ``serve`` (serve, keys, mcp), ``showcase`` (demo, bench, eval).
May import: anything in membus.
"""
