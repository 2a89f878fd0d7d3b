-- cdrpipe vault on PostgreSQL: privileges in the record database (schema vault), as cdrpipe_owner,
-- after `cdrpipe vault init` created the schema. roles.sql explains each role. Idempotent.
--
-- Day partitions are created and dropped only through vault.ensure_day / vault.drop_day (SECURITY
-- DEFINER, owned by cdrpipe_owner), and read and written through their parent tables, so these
-- grants cover every partition, present and future.

REVOKE ALL ON ALL TABLES IN SCHEMA vault FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA vault FROM PUBLIC;
GRANT USAGE ON SCHEMA vault TO cdrpipe_ingest, cdrpipe_officer, cdrpipe_auditor, cdrpipe_purge;

-- ingest: append records, index keys and ids; reserve row ids; register an input format.
-- No SELECT on records or blind_index, nothing but SELECT on audit (the sink's audit check).
GRANT SELECT ON vault.meta, vault.partitions, vault.readers, vault.record_ids, vault.audit TO cdrpipe_ingest;
GRANT INSERT ON vault.records, vault.blind_index, vault.record_ids, vault.day_counts, vault.quarantine,
    vault.readers TO cdrpipe_ingest;
GRANT SELECT, INSERT, UPDATE ON vault.day_rids TO cdrpipe_ingest;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA vault TO cdrpipe_ingest;
GRANT EXECUTE ON FUNCTION vault.ensure_day(integer, text) TO cdrpipe_ingest;

-- officer: read records under warrant, register and revoke warrants, append audit entries
-- (and record the audit witness in meta). INSERT only on audit: never UPDATE or DELETE.
GRANT SELECT ON vault.meta, vault.partitions, vault.readers, vault.records, vault.blind_index, vault.record_ids,
    vault.day_counts, vault.quarantine, vault.warrants, vault.audit TO cdrpipe_officer;
GRANT INSERT ON vault.audit TO cdrpipe_officer;
GRANT INSERT, UPDATE ON vault.warrants, vault.meta TO cdrpipe_officer;

-- auditor: read only, and only what an audit needs (no records, no index).
GRANT SELECT ON vault.audit, vault.warrants, vault.meta, vault.partitions TO cdrpipe_auditor;

-- purge: drop day partitions through the one function, and audit it.
GRANT SELECT ON vault.meta, vault.partitions, vault.readers, vault.audit TO cdrpipe_purge;
GRANT INSERT ON vault.audit TO cdrpipe_purge;
GRANT INSERT, UPDATE ON vault.meta TO cdrpipe_purge;
GRANT EXECUTE ON FUNCTION vault.drop_day(integer) TO cdrpipe_purge;
