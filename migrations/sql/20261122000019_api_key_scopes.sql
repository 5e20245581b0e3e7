-- The scope `work_orders:create` (keys of services that open work orders, e.g. an external
-- monitoring system) was accepted by the API but refused by the table's check, so creating
-- such a key failed. The check lists every scope the API documents again.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (cardinality(scopes) >= 1
           AND scopes <@ ARRAY['work_orders:read', 'work_orders:create', 'alarms:read',
                               'alarms:write', 'rules:read', 'audit:read']
           AND array_position(scopes, NULL) IS NULL);
