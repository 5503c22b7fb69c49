-- GNS store schema, Postgres. Never edit a migration that has shipped; add a new one.

-- One row: the store-wide revision. Every write transaction bumps it first,
-- which also serializes writers across federation replicas.
CREATE TABLE gns_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT  NOT NULL
);
INSERT INTO gns_revision (id, revision) VALUES (1, 0);

-- Every object: clusters, global namespaces and what lives in them.
CREATE TABLE gns_objects (
    kind             TEXT   COLLATE "C" NOT NULL,
    scope            TEXT   COLLATE "C" NOT NULL,  -- owning global namespace, '' for cluster-wide kinds
    name             TEXT   COLLATE "C" NOT NULL,  -- byte order, as in SQLite, for stable paging
    spec             TEXT   NOT NULL,  -- JSON, never holds credentials
    status           TEXT   NOT NULL,  -- JSON
    secret           BYTEA,            -- AES-256-GCM sealed credentials
    resource_version BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,  -- Unix ms
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (kind, scope, name)
);
CREATE INDEX gns_objects_by_scope ON gns_objects (scope);
CREATE INDEX gns_objects_by_revision ON gns_objects (resource_version);

-- References from objects to clusters (global namespace members, routing destinations).
CREATE TABLE gns_cluster_refs (
    from_kind  TEXT NOT NULL,
    from_scope TEXT NOT NULL,
    from_name  TEXT NOT NULL,
    cluster    TEXT NOT NULL,
    PRIMARY KEY (from_kind, from_scope, from_name, cluster)
);
CREATE INDEX gns_cluster_refs_by_cluster ON gns_cluster_refs (cluster);

-- Domains claimed by global namespaces.
CREATE TABLE gns_domains (
    domain TEXT PRIMARY KEY,
    gns    TEXT NOT NULL UNIQUE
);

-- API tokens, by SHA-256 of the secret.
CREATE TABLE gns_tokens (
    name        TEXT   COLLATE "C" PRIMARY KEY,
    role        TEXT   NOT NULL,
    secret_hash TEXT   NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    created_by  TEXT   NOT NULL
);

-- Who changed what, when.
CREATE TABLE gns_audit (
    id       BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT   NOT NULL,
    action   TEXT   NOT NULL,
    kind     TEXT   NOT NULL,
    scope    TEXT   NOT NULL,
    name     TEXT   NOT NULL,
    revision BIGINT NOT NULL
);

-- Store facts, e.g. a value sealed with the secret key to detect a wrong key at start.
CREATE TABLE gns_meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
