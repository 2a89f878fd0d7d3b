"""The retention vault: every raw call record, kept sealed for the legal period, readable only under warrant.

Modules, one idea each:

* ``index``    blind indexes of target identifiers (HMAC with the vault-only index key)
* ``keystore`` per-day record keys in their own file; purging a day destroys its key
* ``backend``  the storage interface: one connection type over SQLite and PostgreSQL
* ``store``    the record store interface and its SQLite implementation: one table pair per day, so a purge is a DROP
* ``postgres`` the PostgreSQL implementation: day partitions, several sinks, roles (``--db postgresql://…``)
* ``readers``  which input format a stored record is read with (the pipeline's adapters)
* ``retention`` the retention period and cut-off, shared by ingest, query and purge
* ``ingest``   the batch transform: open segments, read, normalise, index, re-encrypt, insert
* ``reindex``  file again, by call start and indexed, records ingested before their format was known
* ``sink``     the Kafka consumer and the file reader that feed ``ingest``
* ``warrants`` registered warrants and the scope a query must stay inside
* ``query``    lawful-intercept search: index lookup, decrypt, exact re-check
* ``audit``    the hash-chained, signed access log
* ``witness``  the audit log's copy outside the vault (append-only file or Kafka topic)
* ``export``   JSONL, CSV and an ETSI TS 102 657-style XML delivery
* ``cli``      ``cdrpipe vault init|ingest|sink|reindex|warrant|query|purge|audit|status``
"""
