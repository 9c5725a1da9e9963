-- Audit rows are filtered, limited and expired in SQL (ADR 0042): the workspace a row is about
-- gets its own column (from data.uid, else data.workspace_uid), and each query has its index.
ALTER TABLE audit ADD COLUMN workspace_uid TEXT;
UPDATE audit
   SET workspace_uid = COALESCE(json_extract(data, '$.uid'), json_extract(data, '$.workspace_uid'))
 WHERE CASE WHEN json_valid(data) THEN json_type(data) = 'object' ELSE 0 END;
CREATE INDEX IF NOT EXISTS audit_event ON audit (event, id);
CREATE INDEX IF NOT EXISTS audit_object ON audit (namespace, name, id);
CREATE INDEX IF NOT EXISTS audit_workspace ON audit (workspace_uid, id);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
