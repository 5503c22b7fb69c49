-- Gateway traffic over time, for the telemetry window (GET /v1/telemetry/...):
-- one row per gateway instance report with its traffic since the instance's
-- previous report. Every federation replica reads the same rows; rows older
-- than the window are pruned. No revision, no audit row.
CREATE TABLE gns_telemetry (
    cluster     TEXT   COLLATE "C" NOT NULL,  -- the reporting gateway's cluster (the source)
    instance    TEXT   COLLATE "C" NOT NULL,
    at_ms       BIGINT NOT NULL,              -- Unix ms the report arrived
    interval_ms BIGINT NOT NULL,              -- how long its traffic was counted for
    traffic     TEXT   NOT NULL,              -- JSON: the report's traffic records
    PRIMARY KEY (cluster, instance, at_ms)
);
CREATE INDEX gns_telemetry_by_time ON gns_telemetry (at_ms);
