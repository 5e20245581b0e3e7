-- Sessions with rotating refresh tokens, and the append-only audit log.

-- A session is one login: its refresh tokens form one family. Reusing a rotated refresh token
-- revokes the session (and so every token of the family). Access tokens name their session
-- and are refused once it is revoked.
CREATE TABLE sessions (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    user_id         uuid NOT NULL REFERENCES users (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz NOT NULL DEFAULT now(),
    -- Absolute end: refreshing never extends a session past it.
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    revoked_reason  text CHECK (revoked_reason IN ('logout', 'revoked_by_user', 'revoked_by_admin',
                                                   'user_disabled', 'refresh_token_reuse')),
    ip              text,
    user_agent      text CHECK (length(user_agent) <= 500),
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id, created_at DESC);

-- Only a SHA-256 of each refresh token is stored. `used_at` is set when the token is
-- exchanged for the next one; a second exchange is a reuse.
CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    session_id  uuid NOT NULL REFERENCES sessions (id),
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Who did what, when (UTC), in which tenant, from where, with which request id. The
-- application may add and read rows, never change or remove them. Rows without a tenant
-- (a login naming an unknown organisation) are written but readable by no tenant.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid REFERENCES tenants (id),
    at           timestamptz NOT NULL DEFAULT now(),
    actor_user   uuid,
    action       text NOT NULL CHECK (action ~ '^[a-z_.]{1,64}$'),
    outcome      text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    target_type  text,
    target_id    text,
    request_id   text,
    ip           text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant_id, at DESC);

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON refresh_tokens USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_read ON audit_log FOR SELECT USING (tenant_id = app_current_tenant());
CREATE POLICY audit_write ON audit_log FOR INSERT
    WITH CHECK (tenant_id IS NULL OR tenant_id = app_current_tenant());

GRANT SELECT, INSERT, UPDATE ON sessions, refresh_tokens TO maintainpro_app;
GRANT SELECT, INSERT ON audit_log TO maintainpro_app;
