-- The busy queue and delegations (ADR 0051). Times are Unix milliseconds; `seq` orders the queue
-- (FIFO within a priority) and the delegation lists.
CREATE TABLE IF NOT EXISTS a2a_queue (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    workspace_id     TEXT    NOT NULL,
    caller_id        TEXT,
    priority         BIGINT  NOT NULL,
    body             TEXT    NOT NULL,
    method           TEXT,
    idempotency_key  TEXT,
    delegation_id    TEXT,
    status           TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    enqueued_ms      BIGINT NOT NULL,
    expires_ms       BIGINT,
    dispatched_ms    BIGINT,
    finished_ms      BIGINT,
    response_status  BIGINT ,
    response_preview TEXT,
    last_error       TEXT
);
CREATE INDEX IF NOT EXISTS a2a_queue_drain ON a2a_queue (workspace_id, status, priority, seq);
CREATE INDEX IF NOT EXISTS a2a_queue_status ON a2a_queue (status, expires_ms);
CREATE UNIQUE INDEX IF NOT EXISTS a2a_queue_idempotency ON a2a_queue (workspace_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('queued', 'dispatched');

CREATE TABLE IF NOT EXISTS delegations (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    source_id        TEXT    NOT NULL,
    target_id        TEXT    NOT NULL,
    task             TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    origin           TEXT    NOT NULL,
    idempotency_key  TEXT,
    queue_id         TEXT,
    error            TEXT,
    response_preview TEXT,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS delegations_idempotency ON delegations (source_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS delegations_source ON delegations (source_id, seq);
CREATE INDEX IF NOT EXISTS delegations_target ON delegations (target_id, seq);
CREATE INDEX IF NOT EXISTS delegations_status ON delegations (status);
