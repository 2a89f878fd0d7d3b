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
* ``session``  an open vault (keyring, store, keystore checked together) and its audit log, signer and witness
* ``window``   the ``[from, to)`` window a warrant, query or subject request covers
* ``query``    lawful-intercept search, always audited: index lookup, decrypt, exact re-check
* ``subject_access`` a subscriber's own retained calls for an access request (audited, no warrant)
* ``purge``    crypto-shredding: destroy the day keys, drop the days, audit, in that order
* ``audit``    the hash-chained, signed access log
* ``witness``  the audit log's copy outside the vault (append-only file or Kafka topic)
* ``export``   JSONL, CSV and an ETSI TS 102 657-style XML delivery

The command line (``cdrpipe vault …``) is :mod:`pipeline.commands.vault`; nothing here imports it.
"""
