-- Audit rows are filtered, limited and expired in SQL (ADR 0042): the workspace a row is about
-- gets its own column (from data.uid, else data.workspace_uid), and each query has its index.
ALTER TABLE audit ADD COLUMN IF NOT EXISTS workspace_uid TEXT;
DO $$
DECLARE
    r RECORD;
BEGIN
    FOR r IN SELECT id, data FROM audit LOOP
        BEGIN
            UPDATE audit
               SET workspace_uid = COALESCE(r.data::jsonb ->> 'uid', r.data::jsonb ->> 'workspace_uid')
             WHERE id = r.id AND jsonb_typeof(r.data::jsonb) = 'object';
        EXCEPTION WHEN others THEN
            -- Not JSON: the row stays without a workspace.
            NULL;
        END;
    END LOOP;
END $$;
CREATE INDEX IF NOT EXISTS audit_event ON audit (event, id);
CREATE INDEX IF NOT EXISTS audit_object ON audit (namespace, name, id);
CREATE INDEX IF NOT EXISTS audit_workspace ON audit (workspace_uid, id);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
