-- cdrpipe vault on PostgreSQL: privileges in the keystore database (schema keystore), as
-- cdrpipe_owner, after `cdrpipe vault init`. roles.sql explains each role. Idempotent.

REVOKE ALL ON ALL TABLES IN SCHEMA keystore FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA keystore FROM PUBLIC;
GRANT USAGE ON SCHEMA keystore TO cdrpipe_ingest, cdrpipe_officer, cdrpipe_auditor, cdrpipe_purge;

-- Everyone reads meta: the keystore's identity check and the audit anchor (neither is secret).
GRANT SELECT ON keystore.meta TO cdrpipe_ingest, cdrpipe_officer, cdrpipe_auditor, cdrpipe_purge;

-- ingest: the key of a day it writes, through the one function; no SELECT on day_keys.
GRANT EXECUTE ON FUNCTION keystore.day_key_for_write(integer, text, bytea, text) TO cdrpipe_ingest;

-- officer: unwrap day keys to read records; move the audit anchor.
GRANT SELECT ON keystore.day_keys, keystore.destroyed TO cdrpipe_officer;
GRANT INSERT, UPDATE ON keystore.meta TO cdrpipe_officer;

-- purge: destroy keys without reading them (only the day and key id columns), leave tombstones,
-- move the purge cut-off and the audit anchor.
GRANT SELECT (day, kid), DELETE ON keystore.day_keys TO cdrpipe_purge;
GRANT SELECT, INSERT ON keystore.destroyed TO cdrpipe_purge;
GRANT INSERT, UPDATE ON keystore.meta TO cdrpipe_purge;
