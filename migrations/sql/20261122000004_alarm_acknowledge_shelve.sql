-- Operator actions on alarms, after OPC UA Part 9: acknowledge (with a comment) and shelve
-- (suppress a rule on a tag until a time). A raise while its rule and tag are shelved is
-- recorded on the asset's history but opens or touches no work order.

ALTER TABLE alarms
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by uuid REFERENCES users (id),
    ADD COLUMN ack_comment text CHECK (length(ack_comment) <= 2000),
    -- Raised while shelved: no work order was opened or updated for it.
    ADD COLUMN suppressed boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT alarms_ack_consistent CHECK ((acknowledged_at IS NULL) = (acknowledged_by IS NULL));
CREATE INDEX alarms_tenant_state ON alarms (tenant_id, state, raised_at DESC);

CREATE TABLE alarm_shelves (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    rule_id     text NOT NULL,
    tag_id      bigint NOT NULL REFERENCES tags (id),
    until       timestamptz NOT NULL,
    comment     text NOT NULL CHECK (length(comment) BETWEEN 1 AND 2000),
    created_by  uuid NOT NULL REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when someone ends the shelf before `until`.
    ended_at    timestamptz,
    ended_by    uuid REFERENCES users (id)
);
CREATE INDEX alarm_shelves_lookup ON alarm_shelves (tenant_id, rule_id, tag_id, until DESC);

ALTER TABLE alarm_shelves ENABLE ROW LEVEL SECURITY;
ALTER TABLE alarm_shelves FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alarm_shelves USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
GRANT SELECT, INSERT, UPDATE ON alarm_shelves TO maintainpro_app;
