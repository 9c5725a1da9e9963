-- The activity log of workspaces (ADR 0050): who asked whom for what. One row per event on
-- one workspace's side (an A2A call writes `a2a_send` on the caller and `a2a_receive` on the
-- target). Bodies are JSON text, capped before they are written. Expired by `created_at`.
CREATE TABLE IF NOT EXISTS activity_logs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id  TEXT    NOT NULL,
    activity_type TEXT    NOT NULL,
    source_id     TEXT,
    target_id     TEXT,
    method        TEXT,
    summary       TEXT,
    request_body  TEXT,
    response_body TEXT,
    duration_ms   INTEGER,
    status        TEXT    NOT NULL,
    error_detail  TEXT,
    created_at    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS activity_workspace ON activity_logs (workspace_id, id);
CREATE INDEX IF NOT EXISTS activity_workspace_type ON activity_logs (workspace_id, activity_type, id);
CREATE INDEX IF NOT EXISTS activity_created ON activity_logs (created_at);
