"""The API an agent holds: publish, recall, subscribe, retract and forget, each on behalf of an
identity and each asking the gate first.

Owns: ``api`` (``Bus``, ``Agent``), ``draft`` (``Draft``, ``Receipt``), ``working`` (working
memory: what was just published, before a writer commits it), ``retract``, ``erasure``
(``forget``, following provenance).
May import: ``membus.writer`` and the layers below it.
"""
