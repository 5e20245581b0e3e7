-- MaintAInPro foundation schema.
--
-- Run by the owner role (the role that owns the database, never a superuser in production).
-- The application connects as maintainpro_app: not the owner, no BYPASSRLS. Every tenant table
-- has row-level security ENABLEd and FORCEd; the tenant is set per transaction with
-- set_config('app.tenant_id', <uuid>, true). Without it, every policy matches nothing.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'maintainpro_app') THEN
        CREATE ROLE maintainpro_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO maintainpro_app;

-- The tenant of the current transaction, or NULL (matches nothing) when none is set.
CREATE FUNCTION app_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    email          text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    display_name   text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('admin', 'manager', 'technician', 'requester', 'viewer')),
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);

CREATE TABLE sites (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE assets (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    site_id      uuid NOT NULL REFERENCES sites (id),
    parent_id    uuid REFERENCES assets (id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    criticality  smallint NOT NULL DEFAULT 3 CHECK (criticality BETWEEN 1 AND 5),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE gateways (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    code        text NOT NULL CHECK (code ~ '^[A-Za-z0-9._-]{1,64}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, code)
);

CREATE TABLE tags (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    gateway_id  uuid NOT NULL REFERENCES gateways (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    asset_id    uuid REFERENCES assets (id),
    unit        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (gateway_id, name)
);
CREATE INDEX tags_tenant_asset ON tags (tenant_id, asset_id);

-- Which (gateway, seq) batches are stored: written in the same transaction as the batch's
-- readings, so a redelivered batch is recognised and skipped.
CREATE TABLE ingest_batches (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    gateway_id   uuid NOT NULL REFERENCES gateways (id),
    seq          bigint NOT NULL,
    readings     integer NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, seq)
);

-- Messages ingest could not store as readings, with the reason and the raw bytes.
-- tenant_id is NULL when the topic did not name a known tenant; such rows are visible to
-- operators through the database and metrics, never to a tenant's API users.
CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid REFERENCES tenants (id),
    topic        text NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    payload      bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_tenant_time ON dead_letters (tenant_id, received_at);

CREATE TABLE rule_sets (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL,
    source      text NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE alarms (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    rule_id       text NOT NULL,
    tag_id        bigint NOT NULL REFERENCES tags (id),
    asset_id      uuid NOT NULL REFERENCES assets (id),
    failure_mode  text NOT NULL,
    severity      text NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    state         text NOT NULL CHECK (state IN ('active', 'cleared')),
    trigger_value double precision NOT NULL,
    raised_at     timestamptz NOT NULL,
    cleared_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- One active alarm per rule and tag.
CREATE UNIQUE INDEX alarms_one_active ON alarms (tenant_id, rule_id, tag_id) WHERE state = 'active';

CREATE TABLE work_orders (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    asset_id         uuid NOT NULL REFERENCES assets (id),
    title            text NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    description      text NOT NULL DEFAULT '',
    priority         text NOT NULL CHECK (priority IN ('low', 'medium', 'high', 'critical')),
    status           text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'assigned', 'in_progress', 'on_hold', 'completed', 'verified', 'cancelled')),
    work_type        text NOT NULL DEFAULT 'corrective'
                     CHECK (work_type IN ('corrective', 'preventive', 'inspection', 'emergency', 'instrumentation')),
    failure_mode     text,
    source           text NOT NULL CHECK (source IN ('rule', 'manual')),
    rule_id          text,
    alarm_id         uuid REFERENCES alarms (id),
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, idempotency_key)
);
-- At most one open work order per asset and failure mode.
CREATE UNIQUE INDEX work_orders_one_open_per_failure ON work_orders (tenant_id, asset_id, failure_mode)
    WHERE failure_mode IS NOT NULL AND status NOT IN ('completed', 'verified', 'cancelled');
CREATE INDEX work_orders_tenant_created ON work_orders (tenant_id, created_at DESC, id);

CREATE TABLE work_order_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    work_order_id  uuid NOT NULL REFERENCES work_orders (id),
    kind           text NOT NULL,
    detail         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Set for events caused by an alarm transition, so a retried transition adds no event.
    idempotency_key text,
    at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX work_order_events_order ON work_order_events (work_order_id, id);

-- Row-level security on every tenant table: one fail-closed policy each.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'sites', 'assets', 'gateways', 'tags', 'ingest_batches',
                             'rule_sets', 'alarms', 'work_orders', 'work_order_events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_current_tenant()) '
                       'WITH CHECK (tenant_id = app_current_tenant())', t);
    END LOOP;
END
$$;

-- A tenant sees and changes only its own row, but any tenant's id can be found by its slug
-- (logins name their organisation); only id and slug are readable that way.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_lookup ON tenants FOR SELECT USING (true);
CREATE POLICY tenant_insert ON tenants FOR INSERT WITH CHECK (id = app_current_tenant());
CREATE POLICY tenant_update ON tenants FOR UPDATE USING (id = app_current_tenant())
    WITH CHECK (id = app_current_tenant());

-- Dead letters: a tenant reads its own; rows without a tenant can be written but not read.
ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
ALTER TABLE dead_letters FORCE ROW LEVEL SECURITY;
CREATE POLICY dead_letter_read ON dead_letters FOR SELECT USING (tenant_id = app_current_tenant());
CREATE POLICY dead_letter_write ON dead_letters FOR INSERT
    WITH CHECK (tenant_id IS NULL OR tenant_id = app_current_tenant());

GRANT SELECT (id, slug) ON tenants TO maintainpro_app;
-- The full row of the current tenant only.
CREATE VIEW current_tenant AS
    SELECT id, slug, name, created_at FROM tenants WHERE id = app_current_tenant();
GRANT SELECT ON current_tenant TO maintainpro_app;
GRANT INSERT, UPDATE ON tenants TO maintainpro_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON users, sites, assets, gateways, tags, rule_sets,
    alarms, work_orders TO maintainpro_app;
GRANT SELECT, INSERT ON ingest_batches, work_order_events TO maintainpro_app;
GRANT SELECT, INSERT ON dead_letters TO maintainpro_app;
