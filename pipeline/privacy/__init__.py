"""Subject rights: requests in, suppressions and erasure notices out (see docs/privacy.md).

Modules: ``requests`` (the request record, validation, `cdrpipe privacy submit`), ``state`` (the
per-subject merge), ``worker`` (the faust app, `cdrpipe privacy worker`), ``follower`` (what the
Kafka worker uses to follow ``privacy.suppressions``), ``service`` (runtime shared by the faust
apps), ``cli`` (the ``privacy`` command). Importing this package imports nothing heavy.
"""
