"""The retention vault: every raw call record, kept sealed for the legal period, readable only under warrant.

Modules, one idea each:

* ``index``    blind indexes of target identifiers (HMAC with the vault-only index key)
* ``keystore`` per-day record keys in their own file; purging a day destroys its key
* ``store``    the record database: one SQLite table pair per day, so a purge is a DROP
* ``ingest``   the batch transform: open segments, normalise, index, re-encrypt, insert
* ``sink``     the Kafka consumer and the file reader that feed ``ingest``
* ``query``    lawful-intercept search: index lookup, decrypt, exact re-check
* ``audit``    the hash-chained, optionally signed, access log
* ``export``   JSONL, CSV and an ETSI TS 102 657-style XML delivery
* ``cli``      ``cdrpipe vault ingest|sink|query|purge|audit|status``
"""
