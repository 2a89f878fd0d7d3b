"""Subject rights: requests in, suppressions, erasure notices and subject exports out (see docs/privacy.md).

Modules: ``requests`` (the request record, validation, subject tokens, what `cdrpipe privacy submit` sends),
``deadlines`` (Art. 12(3) due dates and extensions), ``register`` (the DPO's case register,
`cdrpipe privacy status|extend|close`), ``subject_export`` (`cdrpipe privacy export`: access and
portability) with ``analytics_source`` (the subject's records in cdr.analytics or files),
``state`` (the per-subject merge), ``worker`` (the faust app, `cdrpipe privacy worker`),
``follower`` (what the Kafka worker uses to follow ``privacy.suppressions``). The ``privacy``
command is :mod:`pipeline.commands.privacy`. The runtime and flags it shares with the aggregates app are in
:mod:`pipeline.apps`. The vault side of an access request is ``pipeline.vault.subject_access``.
Importing this package imports nothing heavy; faust is imported only by the worker.
"""
