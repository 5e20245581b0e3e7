-- Unknown tags from a known gateway: registered by ingest when the tenant's policy allows it
-- (off by default: a typo on a gateway should not become a tag), up to a number of tags per
-- gateway; otherwise their readings go on dead-lettering as `unknown_tag`.

CREATE TABLE tenant_ingest_policy (
    tenant_id             uuid PRIMARY KEY REFERENCES tenants (id),
    auto_register_tags    boolean NOT NULL DEFAULT false,
    max_tags_per_gateway  integer NOT NULL DEFAULT 10000
                          CHECK (max_tags_per_gateway BETWEEN 1 AND 1000000),
    updated_by            uuid REFERENCES users (id),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- When ingest registered the tag (NULL: registered by a person or an import), so that the
-- registry can show what still needs a unit, a range and an asset.
ALTER TABLE tags ADD COLUMN auto_registered_at timestamptz;

ALTER TABLE tenant_ingest_policy ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_ingest_policy FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_ingest_policy USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
GRANT SELECT, INSERT, UPDATE ON tenant_ingest_policy TO maintainpro_app;
