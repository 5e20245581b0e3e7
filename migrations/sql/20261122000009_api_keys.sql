-- API keys of an organisation's gateways and services.
--
-- A key is `mpak.<tenant>.<id>.<secret>`, shown once; only an HMAC-SHA-256 of it is kept, under
-- a key derived from the password pepper, which never enters the database. A key holds one or
-- more scopes (the list the API documents) and works until it is revoked or expires. Rotating
-- a key creates its replacement (`replaced_by`) and moves the old key's expiry to the end of
-- the overlap. `last_used_at` is written at most once a minute per key.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    secret_hash   bytea NOT NULL CHECK (length(secret_hash) = 32),
    scopes        text[] NOT NULL
        CHECK (cardinality(scopes) >= 1
               AND scopes <@ ARRAY['work_orders:read', 'alarms:read', 'alarms:write',
                                   'rules:read', 'audit:read']
               AND array_position(scopes, NULL) IS NULL),
    created_by    uuid NOT NULL REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- NULL: the key does not expire.
    expires_at    timestamptz CHECK (expires_at > created_at),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    revoked_by    uuid REFERENCES users (id),
    replaced_by   uuid REFERENCES api_keys (id),
    CHECK (revoked_by IS NULL OR revoked_at IS NOT NULL)
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at DESC);

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());

-- Keys are revoked, never deleted: the audit log names them.
GRANT SELECT, INSERT, UPDATE ON api_keys TO maintainpro_app;
