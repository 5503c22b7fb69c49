-- A token may be limited to some global namespaces (viewer, editor) or
-- work in them only (workload): a JSON array of their names, NULL when the
-- token is not scoped.
ALTER TABLE gns_tokens ADD COLUMN global_namespaces TEXT;
