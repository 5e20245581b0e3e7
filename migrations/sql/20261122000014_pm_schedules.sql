-- Preventive maintenance: schedules by calendar (every N days, weeks or months at a local time
-- in a time zone) or by meter (every N units of a counter tag), and each occurrence handled:
-- generated as a work order, or skipped. The primary key of pm_occurrences and the work
-- order's idempotency key (`pm:<schedule>:<n>`) make a restarted scheduler generate nothing
-- twice.

CREATE TABLE pm_schedules (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    asset_id        uuid NOT NULL,
    title           text NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 10000),
    priority        text NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high', 'critical')),
    work_type       text NOT NULL DEFAULT 'preventive'
                    CHECK (work_type IN ('corrective', 'preventive', 'inspection', 'emergency', 'instrumentation')),
    checklist       jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(checklist) = 'array'),
    assignee_user   uuid,
    assignee_team   uuid,
    kind            text NOT NULL CHECK (kind IN ('calendar', 'meter')),
    -- Calendar: the first occurrence in local time of cal_zone, and the step ("1 month").
    cal_start       timestamp,
    cal_zone        text,
    cal_every       text,
    -- Generated this long before the occurrence (calendar).
    lead            interval NOT NULL DEFAULT '0' CHECK (lead >= interval '0' AND lead <= interval '366 days'),
    -- Meter: the counter tag, its value at the start, the step, and how many units ahead.
    meter_tag_id    bigint REFERENCES tags (id),
    meter_start     double precision,
    meter_every     double precision CHECK (meter_every > 0),
    meter_lead      double precision CHECK (meter_lead >= 0),
    active          boolean NOT NULL DEFAULT true,
    -- The last occurrence recorded in pm_occurrences; NULL before the first.
    handled         integer,
    created_by      uuid REFERENCES users (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    FOREIGN KEY (tenant_id, asset_id) REFERENCES assets (tenant_id, id),
    FOREIGN KEY (tenant_id, assignee_user) REFERENCES users (tenant_id, id),
    FOREIGN KEY (tenant_id, assignee_team) REFERENCES teams (tenant_id, id),
    CHECK (kind <> 'calendar' OR (cal_start IS NOT NULL AND cal_zone IS NOT NULL AND cal_every IS NOT NULL)),
    CHECK (kind <> 'meter' OR (meter_tag_id IS NOT NULL AND meter_start IS NOT NULL
                               AND meter_every IS NOT NULL AND meter_lead IS NOT NULL))
);

CREATE TABLE pm_occurrences (
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    schedule_id    uuid NOT NULL REFERENCES pm_schedules (id) ON DELETE CASCADE,
    n              integer NOT NULL CHECK (n >= 0),
    due_at         timestamptz NOT NULL,
    status         text NOT NULL CHECK (status IN ('generated', 'skipped')),
    -- Generated after its due time (the scheduler was down, or a counter jumped).
    late           boolean NOT NULL DEFAULT false,
    work_order_id  uuid REFERENCES work_orders (id),
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, n),
    CHECK ((status = 'generated') = (work_order_id IS NOT NULL))
);

ALTER TABLE work_orders DROP CONSTRAINT work_orders_source_check;
ALTER TABLE work_orders
    ADD CONSTRAINT work_orders_source_check CHECK (source IN ('rule', 'manual', 'pm')),
    ADD COLUMN pm_schedule_id uuid REFERENCES pm_schedules (id);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['pm_schedules', 'pm_occurrences']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_current_tenant()) '
                       'WITH CHECK (tenant_id = app_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE ON pm_schedules TO maintainpro_app;
GRANT SELECT, INSERT ON pm_occurrences TO maintainpro_app;
