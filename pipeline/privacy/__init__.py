"""Subject rights: requests in, suppressions and erasure notices out (see docs/privacy.md).

Modules: ``requests`` (the request record, validation, subject tokens, `cdrpipe privacy submit`),
``state`` (the per-subject merge), ``worker`` (the faust app, `cdrpipe privacy worker`),
``follower`` (what the Kafka worker uses to follow ``privacy.suppressions``), ``service`` and
``options`` (runtime and flags shared by both faust apps), ``process`` (run an app as a child
process: demo, bench, tests), ``cli`` (the ``privacy`` command). Importing this package imports
nothing heavy; faust is imported only by ``service`` and the workers.
"""
