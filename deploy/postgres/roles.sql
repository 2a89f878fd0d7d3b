-- cdrpipe vault on PostgreSQL: the database roles, once per cluster (as a superuser or CREATEROLE).
--
-- Why five roles: each vault duty gets only what it needs, so a leaked credential is limited to
-- that duty (docs/vault.md, "PostgreSQL"):
--   cdrpipe_owner    owns the vault and keystore schemas; runs `cdrpipe vault init` and the grants
--                    files; used by no running process.
--   cdrpipe_ingest   `vault sink` / `vault ingest`: appends records, cannot read them, cannot read
--                    the keystore's day keys back, cannot write or change audit entries.
--   cdrpipe_officer  `vault query`, `vault warrant …`, `vault status`: reads records and day keys,
--                    appends audit entries, never changes or deletes one.
--   cdrpipe_auditor  `vault audit verify|export|check-export`: reads the audit log, the warrants and
--                    the keystore's anchor, and nothing else; writes nothing.
--   cdrpipe_purge    `vault purge`: drops day partitions (through vault.drop_day), destroys day keys
--                    (without reading them), appends its audit entry.
-- Passwords (or certificate / IAM mappings) are the platform's: set them with \password or the
-- operator's secret manager, never in this file. Idempotent: safe to run again.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['cdrpipe_owner', 'cdrpipe_ingest', 'cdrpipe_officer', 'cdrpipe_auditor', 'cdrpipe_purge']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION', r);
        END IF;
    END LOOP;
END $$;

-- Then, as the same superuser: databases.sql (the record and keystore databases); as cdrpipe_owner:
--   cdrpipe vault init --keyring vault-keyring.json --db postgresql://cdrpipe_owner@HOST/vault \
--       --keystore postgresql://cdrpipe_owner@HOST/vault_keys
--   psql postgresql://cdrpipe_owner@HOST/vault -f grants-vault.sql
--   psql postgresql://cdrpipe_owner@HOST/vault_keys -f grants-keystore.sql
