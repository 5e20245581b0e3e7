-- Multi-factor authentication: TOTP secrets, recovery codes, and which roles an organisation
-- requires it for.

-- One authenticator per user. `secret` is the TOTP secret sealed by the API (a 12-byte nonce,
-- then the ChaCha20-Poly1305 ciphertext and tag, the user's id as associated data) under a key
-- derived from the password pepper, which never enters the database. The row is pending while
-- `confirmed_at` is NULL (enrolled, no code proven yet). `last_step` is the highest TOTP time
-- step accepted: a code of that step or an earlier one is refused, so no code counts twice.
-- `failures` counts wrong codes in a row; at 5 the user is locked until `locked_until`.
CREATE TABLE user_mfa (
    user_id       uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    secret        bytea NOT NULL CHECK (length(secret) BETWEEN 29 AND 128),
    created_at    timestamptz NOT NULL DEFAULT now(),
    confirmed_at  timestamptz,
    last_step     bigint CHECK (last_step >= 0),
    failures      integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    locked_until  timestamptz
);
CREATE INDEX user_mfa_tenant ON user_mfa (tenant_id);

-- Single-use recovery codes, shown once; only a keyed SHA-256 (HMAC under a key derived from
-- the pepper) of each is kept.
CREATE TABLE mfa_recovery_codes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash   bytea NOT NULL CHECK (length(code_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    used_at     timestamptz,
    UNIQUE (user_id, code_hash)
);
CREATE INDEX mfa_recovery_codes_tenant ON mfa_recovery_codes (tenant_id);

-- The roles whose users must use MFA in an organisation; no row means none.
CREATE TABLE tenant_mfa_policy (
    tenant_id       uuid PRIMARY KEY REFERENCES tenants (id),
    required_roles  text[] NOT NULL DEFAULT '{}'
        CHECK (required_roles <@ ARRAY['admin', 'manager', 'technician', 'requester', 'viewer']
               AND array_position(required_roles, NULL) IS NULL),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      uuid REFERENCES users (id)
);

ALTER TABLE user_mfa ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_mfa FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON user_mfa USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
ALTER TABLE mfa_recovery_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE mfa_recovery_codes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON mfa_recovery_codes USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
ALTER TABLE tenant_mfa_policy ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_mfa_policy FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_mfa_policy USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON user_mfa, mfa_recovery_codes TO maintainpro_app;
GRANT SELECT, INSERT, UPDATE ON tenant_mfa_policy TO maintainpro_app;
