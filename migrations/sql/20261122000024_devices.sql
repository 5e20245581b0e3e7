-- Devices between gateways and tags: the PLCs, meters and servers a gateway reads, each with
-- its protocol and address, optionally the asset it belongs to. A tag may name the device it
-- is read from (on the tag's own gateway).

CREATE TABLE devices (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    gateway_id   uuid NOT NULL REFERENCES gateways (id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    protocol     text NOT NULL CHECK (protocol IN ('modbus_tcp', 'modbus_rtu', 'modbus_rtu_tcp',
                                                   'opcua', 'mqtt', 'other')),
    -- Where the gateway reaches it: host:port, a serial port and unit id, an endpoint URL.
    address      text NOT NULL DEFAULT '' CHECK (length(address) <= 300),
    asset_id     uuid,
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (gateway_id, name),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, asset_id) REFERENCES assets (tenant_id, id)
);
CREATE INDEX devices_gateway ON devices (tenant_id, gateway_id, name);

ALTER TABLE tags ADD COLUMN device_id uuid REFERENCES devices (id) ON DELETE SET NULL;

ALTER TABLE devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE devices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON devices USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON devices TO maintainpro_app;
