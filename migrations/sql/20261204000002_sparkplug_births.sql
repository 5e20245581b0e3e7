-- The births of the Sparkplug B edge nodes ingest follows, so that it reads a node's data by
-- the aliases its births named also after ingest restarts (data the broker kept meanwhile
-- included). Written in the transaction that stores the birth or death as a batch.
-- One row per node (device '') and per device of the node: the bytes of its last birth, or
-- NULL once it died. `version` orders the messages as ingest read them, so that a row written
-- by a transaction that committed late never replaces a later one; a device's row counts only
-- while `node_version` is the version of the node's current row (a device born under an
-- earlier NBIRTH is not born under the current one).
CREATE TABLE sparkplug_births (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    gateway_id    uuid NOT NULL REFERENCES gateways (id) ON DELETE CASCADE,
    device        text NOT NULL,
    version       bigint NOT NULL,
    node_version  bigint NOT NULL,
    payload       bytea,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, device)
);

ALTER TABLE sparkplug_births ENABLE ROW LEVEL SECURITY;
ALTER TABLE sparkplug_births FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sparkplug_births USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
GRANT SELECT, INSERT, UPDATE ON sparkplug_births TO maintainpro_app;
