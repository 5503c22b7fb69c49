-- Gateway tokens (role `gateway`) belong to one cluster: they read that
-- cluster's gateway config and report its gateway instances, nothing else.
ALTER TABLE gns_tokens ADD COLUMN cluster TEXT COLLATE "C";
-- The tokens gateways got when they traded a join token (viewers, before
-- gateway tokens existed) become their cluster's gateway tokens: they keep
-- following their config and may now report, and lose the global reads.
UPDATE gns_tokens SET role = 'gateway', cluster = substr(created_by, 12)
 WHERE role = 'viewer' AND created_by LIKE 'join-token:%';
