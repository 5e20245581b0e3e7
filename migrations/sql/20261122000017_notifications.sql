-- Email notifications: where each tenant's notifier stands in its event log, and every mail
-- sent or failed.

CREATE TABLE notification_cursors (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    after_seq  bigint NOT NULL
);

CREATE TABLE notifications (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    event_seq   bigint NOT NULL,
    user_id     uuid REFERENCES users (id),
    email       text NOT NULL,
    subject     text NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('sent', 'failed')),
    error       text CHECK (length(error) <= 500),
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_tenant ON notifications (tenant_id, id DESC);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['notification_cursors', 'notifications']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_current_tenant()) '
                       'WITH CHECK (tenant_id = app_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE ON notification_cursors TO maintainpro_app;
GRANT SELECT, INSERT ON notifications TO maintainpro_app;
