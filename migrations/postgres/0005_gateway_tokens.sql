-- Gateway tokens (role `gateway`) belong to one cluster: they read that
-- cluster's gateway config and report its gateway instances, nothing else.
ALTER TABLE gns_tokens ADD COLUMN cluster TEXT COLLATE "C";
