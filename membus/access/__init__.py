"""Who may do what, and proof of who did it: the permission gate at every door, casbin
policies and their live reload, per-agent event signing, the audit trail, PII redaction.

Owns: ``gate`` (the permission port, ``Identity``, ``ReadGrant``), ``policy`` (the casbin
engine), ``watch`` (policy lines, where they live, how a change reaches every process),
``signing`` (agent keys and event signatures), ``audit``, ``redact``.
May import: ``membus.core``, ``membus.errors``.
"""
