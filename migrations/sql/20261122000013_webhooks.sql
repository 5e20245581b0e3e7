-- Webhooks: per tenant, the event kinds a receiver wants, its signing secret (sealed), where
-- its delivery stands, and the delivery log.

CREATE TABLE webhooks (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    url               text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    -- Prefixes of event kinds (`work_order.`, `part.low_stock`); empty: every event.
    event_kinds       text[] NOT NULL DEFAULT '{}',
    -- The HMAC-SHA256 signing secret, sealed with a key derived from the pepper (bound to id).
    secret_sealed     bytea NOT NULL,
    -- Private, loopback and link-local targets are refused unless an admin allowed them here.
    allow_private     boolean NOT NULL DEFAULT false,
    enabled           boolean NOT NULL DEFAULT true,
    disabled_reason   text,
    -- The last event handled (delivered, or given up after every attempt).
    after_seq         bigint NOT NULL,
    -- Attempts made so far at the next event, and when the next one is due.
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz,
    failed_in_a_row   integer NOT NULL DEFAULT 0,
    created_by        uuid REFERENCES users (id),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id) WHERE enabled;

CREATE TABLE webhook_deliveries (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    webhook_id   uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_seq    bigint NOT NULL,
    attempt      integer NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('delivered', 'failed', 'refused')),
    status_code  integer,
    error        text CHECK (length(error) <= 500),
    duration_ms  integer NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (tenant_id, webhook_id, id DESC);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['webhooks', 'webhook_deliveries']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_current_tenant()) '
                       'WITH CHECK (tenant_id = app_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON webhooks TO maintainpro_app;
GRANT SELECT, INSERT, DELETE ON webhook_deliveries TO maintainpro_app;
