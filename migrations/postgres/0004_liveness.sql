-- Liveness, apart from the store of intent: heartbeats of external workloads
-- and the sync facts of member clusters (last sync, counts). Written without
-- a revision and without an audit row; only a transition of effective state
-- (a workload expired or alive again) is written to gns_objects.
CREATE TABLE gns_liveness (
    kind       TEXT   COLLATE "C" NOT NULL,
    scope      TEXT   COLLATE "C" NOT NULL,
    name       TEXT   COLLATE "C" NOT NULL,
    beat_ms    BIGINT NOT NULL,  -- Unix ms of the last beat or report
    expires_ms BIGINT NOT NULL,  -- when it lapses without another; 9223372036854775807: nothing pending
    data       TEXT   NOT NULL,  -- JSON facts of the last report
    PRIMARY KEY (kind, scope, name)
);
CREATE INDEX gns_liveness_by_expiry ON gns_liveness (kind, expires_ms);
