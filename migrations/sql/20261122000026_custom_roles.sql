-- Custom roles: an organisation's own roles, each a list of permissions from the documented
-- list (docs/PERMISSIONS.md). A user's role is a built-in role's name or a custom role's; the
-- custom one must exist in the user's organisation, and cannot be deleted while held.

CREATE TABLE custom_roles (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    name         text NOT NULL
        CHECK (name ~ '^[a-z][a-z0-9_-]{1,39}$'
               AND name NOT IN ('admin', 'manager', 'technician', 'requester', 'viewer')),
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    -- Permission names; the application checks them against its list, and ignores a name it
    -- no longer knows (fail closed).
    permissions  text[] NOT NULL
        CHECK (array_position(permissions, NULL) IS NULL AND cardinality(permissions) <= 64),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

ALTER TABLE custom_roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE custom_roles FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON custom_roles USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON custom_roles TO maintainpro_app;

ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD COLUMN custom_role text GENERATED ALWAYS AS (
    CASE WHEN role IN ('admin', 'manager', 'technician', 'requester', 'viewer') THEN NULL
         ELSE role END) STORED;
ALTER TABLE users ADD CONSTRAINT users_custom_role_exists
    FOREIGN KEY (tenant_id, custom_role) REFERENCES custom_roles (tenant_id, name);
CREATE INDEX users_custom_role ON users (tenant_id, custom_role) WHERE custom_role IS NOT NULL;

-- The MFA policy may name custom roles too; the application checks the names.
ALTER TABLE tenant_mfa_policy DROP CONSTRAINT tenant_mfa_policy_required_roles_check;
ALTER TABLE tenant_mfa_policy ADD CONSTRAINT tenant_mfa_policy_required_roles_check
    CHECK (array_position(required_roles, NULL) IS NULL AND cardinality(required_roles) <= 100);
