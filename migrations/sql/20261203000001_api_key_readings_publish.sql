-- The scope `readings:publish`: a gateway's key that is its broker login (the server keeps
-- one broker account per such key, docs/GATEWAY.md). The check lists every scope the API
-- documents again.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (cardinality(scopes) >= 1
           AND scopes <@ ARRAY['work_orders:read', 'work_orders:create', 'alarms:read',
                               'alarms:write', 'rules:read', 'audit:read', 'readings:publish']
           AND array_position(scopes, NULL) IS NULL);
