-- Password reset by email: a request stores the SHA-256 of a random token sent to the user's
-- address; the token, used once before it expires, sets a new password (with the second
-- factor when the account has MFA) and ends every session.

CREATE TABLE password_resets (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    user_id     uuid NOT NULL REFERENCES users (id),
    token_hash  bytea NOT NULL CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    -- Set when the token is used, or when another use or a password change retired it.
    used_at     timestamptz,
    ip          text
);
CREATE INDEX password_resets_user ON password_resets (tenant_id, user_id, created_at DESC);

ALTER TABLE password_resets ENABLE ROW LEVEL SECURITY;
ALTER TABLE password_resets FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON password_resets USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
GRANT SELECT, INSERT, UPDATE ON password_resets TO maintainpro_app;
