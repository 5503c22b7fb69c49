-- Deleted objects, one row per key with the revision of its last delete, so
-- readers that follow the store incrementally (the snapshot builder) learn of
-- deletes without re-reading everything. Bounded by the number of distinct
-- keys ever deleted; a later re-create of the key has a higher resource_version.
CREATE TABLE gns_tombstones (
    kind     TEXT   NOT NULL,
    scope    TEXT   NOT NULL,
    name     TEXT   NOT NULL,
    revision BIGINT NOT NULL,
    PRIMARY KEY (kind, scope, name)
);
CREATE INDEX gns_tombstones_by_revision ON gns_tombstones (revision);
