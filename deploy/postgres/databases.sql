-- cdrpipe vault on PostgreSQL: the two databases, once per cluster, as a superuser, after roles.sql.
-- Two databases, so the keystore is backed up apart from the records: a restored record backup
-- never carries the day keys a purge destroyed (docs/vault.md, "Backups and the keystore").
CREATE DATABASE vault OWNER cdrpipe_owner;
CREATE DATABASE vault_keys OWNER cdrpipe_owner;
REVOKE ALL ON DATABASE vault, vault_keys FROM PUBLIC;
GRANT CONNECT ON DATABASE vault TO cdrpipe_ingest, cdrpipe_officer, cdrpipe_auditor, cdrpipe_purge;
GRANT CONNECT ON DATABASE vault_keys TO cdrpipe_ingest, cdrpipe_officer, cdrpipe_auditor, cdrpipe_purge;
