-- Current state: one row per live object. `rv` is the object's resourceVersion.
CREATE TABLE IF NOT EXISTS objects (
    resource  TEXT   NOT NULL,
    namespace TEXT   NOT NULL,
    name      TEXT   NOT NULL,
    rv        BIGINT NOT NULL,
    value     TEXT   NOT NULL,
    PRIMARY KEY (resource, namespace, name)
);

-- Change log (the watch history); rv is the resourceVersion. Compacted from below.
CREATE TABLE IF NOT EXISTS changes (
    rv        BIGINT PRIMARY KEY,
    resource  TEXT   NOT NULL,
    namespace TEXT   NOT NULL,
    name      TEXT   NOT NULL,
    event     TEXT   NOT NULL,
    value     TEXT   NOT NULL
);

-- Single-row table: the global resourceVersion counter and the compaction floor.
CREATE TABLE IF NOT EXISTS meta (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    rv         BIGINT  NOT NULL,
    compacted  BIGINT  NOT NULL
);
INSERT INTO meta (id, rv, compacted) VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING;

-- Append-only audit rows written by controllers (structured events such as org.import.started).
CREATE TABLE IF NOT EXISTS audit (
    id        BIGSERIAL PRIMARY KEY,
    at        TEXT   NOT NULL,
    event     TEXT   NOT NULL,
    namespace TEXT   NOT NULL,
    name      TEXT   NOT NULL,
    data      TEXT   NOT NULL
);
