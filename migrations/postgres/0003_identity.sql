-- One-time join tokens for gateways, by SHA-256 of the secret. Redeeming one
-- deletes it; an expired one is refused (and deleted when met).
CREATE TABLE gns_join_tokens (
    secret_hash TEXT   PRIMARY KEY,
    cluster     TEXT   NOT NULL,
    expires_at  BIGINT NOT NULL,  -- Unix ms
    created_at  BIGINT NOT NULL,
    created_by  TEXT   NOT NULL
);
CREATE INDEX gns_join_tokens_by_cluster ON gns_join_tokens (cluster);
