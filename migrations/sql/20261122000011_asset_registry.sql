-- The asset registry maintenance staff keep: areas of a site, and per asset its make, model
-- and serial number, install date, warranty and operating status. Assets form a tree (parent
-- to any depth, within one site); moving an asset keeps its id, so its work orders, alarms and
-- tags keep pointing at it.

CREATE TABLE areas (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    site_id     uuid NOT NULL REFERENCES sites (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, name),
    UNIQUE (tenant_id, id)
);

ALTER TABLE sites ADD CONSTRAINT sites_tenant_id_unique UNIQUE (tenant_id, id);
ALTER TABLE assets ADD CONSTRAINT assets_tenant_id_unique UNIQUE (tenant_id, id);

ALTER TABLE assets
    ADD COLUMN area_id uuid,
    ADD COLUMN manufacturer text CHECK (length(manufacturer) <= 200),
    ADD COLUMN model text CHECK (length(model) <= 200),
    ADD COLUMN serial_number text CHECK (length(serial_number) <= 200),
    ADD COLUMN installed_on date,
    ADD COLUMN warranty_until date,
    ADD COLUMN status text NOT NULL DEFAULT 'operational'
        CHECK (status IN ('operational', 'degraded', 'down', 'standby', 'decommissioned')),
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT assets_area FOREIGN KEY (tenant_id, area_id) REFERENCES areas (tenant_id, id),
    ADD CONSTRAINT assets_not_own_parent CHECK (parent_id IS DISTINCT FROM id);

-- A parent of another tenant can never be named (the tree stays within a tenant).
ALTER TABLE assets
    ADD CONSTRAINT assets_parent_same_tenant
        FOREIGN KEY (tenant_id, parent_id) REFERENCES assets (tenant_id, id);

CREATE INDEX assets_tenant_site ON assets (tenant_id, site_id, name);

ALTER TABLE areas ENABLE ROW LEVEL SECURITY;
ALTER TABLE areas FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON areas USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON areas TO maintainpro_app;
