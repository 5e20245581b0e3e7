-- Work orders that people work: teams, assignment to a user or a team, requests and who made
-- them, due dates from a service level per priority, who did what in the history, time logs,
-- checklists, and full-text search over title and description. The state machine itself is
-- the application's (`api::work_order_flow`); the database keeps the columns consistent.

CREATE TABLE teams (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    -- Lets team_members and work_orders name a team of their own tenant only.
    UNIQUE (tenant_id, id)
);

CREATE TABLE team_members (
    tenant_id  uuid NOT NULL,
    team_id    uuid NOT NULL,
    user_id    uuid NOT NULL REFERENCES users (id),
    PRIMARY KEY (team_id, user_id),
    FOREIGN KEY (tenant_id, team_id) REFERENCES teams (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX team_members_user ON team_members (tenant_id, user_id);

-- How long a work order of each priority may take before it is overdue, per tenant. A
-- priority without a row uses the defaults of `work_order_sla_due`.
CREATE TABLE sla_policies (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    priority        text NOT NULL CHECK (priority IN ('low', 'medium', 'high', 'critical')),
    resolve_within  interval NOT NULL
                    CHECK (resolve_within > interval '0' AND resolve_within <= interval '366 days'),
    PRIMARY KEY (tenant_id, priority)
);

ALTER TABLE users ADD CONSTRAINT users_tenant_id_unique UNIQUE (tenant_id, id);

ALTER TABLE work_orders
    -- The user who created it through the API (a request); NULL for the rules engine's.
    ADD COLUMN requested_by uuid,
    ADD COLUMN assignee_user uuid,
    ADD COLUMN assignee_team uuid,
    ADD COLUMN due_at timestamptz,
    -- Whether due_at follows the priority's service level (and moves with the priority), or
    -- was set by hand.
    ADD COLUMN due_from_sla boolean NOT NULL DEFAULT true,
    -- When work first started (in_progress), for repair times.
    ADD COLUMN started_at timestamptz,
    ADD COLUMN priority_rank smallint GENERATED ALWAYS AS (
        CASE priority WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2 ELSE 1 END
    ) STORED,
    ADD COLUMN search tsvector GENERATED ALWAYS AS (
        to_tsvector('english'::regconfig, title || ' ' || description)
    ) STORED,
    ADD CONSTRAINT work_orders_requested_by
        FOREIGN KEY (tenant_id, requested_by) REFERENCES users (tenant_id, id),
    ADD CONSTRAINT work_orders_assignee_user
        FOREIGN KEY (tenant_id, assignee_user) REFERENCES users (tenant_id, id),
    ADD CONSTRAINT work_orders_assignee_team
        FOREIGN KEY (tenant_id, assignee_team) REFERENCES teams (tenant_id, id),
    ADD CONSTRAINT work_orders_assigned_has_assignee
        CHECK (status <> 'assigned' OR assignee_user IS NOT NULL OR assignee_team IS NOT NULL);

-- Sets due_at from the service level of the priority: at insert, and when the priority
-- changes or due_at is handed back to the service level. Runs as its caller: the policy row
-- it reads is the transaction's tenant's.
CREATE FUNCTION work_order_sla_due() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.due_from_sla AND (TG_OP = 'INSERT'
                             OR NEW.priority IS DISTINCT FROM OLD.priority
                             OR NOT OLD.due_from_sla) THEN
        NEW.due_at := NEW.created_at + coalesce(
            (SELECT p.resolve_within FROM public.sla_policies p
              WHERE p.tenant_id = NEW.tenant_id AND p.priority = NEW.priority),
            CASE NEW.priority
                WHEN 'critical' THEN interval '4 hours'
                WHEN 'high' THEN interval '1 day'
                WHEN 'medium' THEN interval '3 days'
                ELSE interval '7 days'
            END);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER work_orders_sla_due BEFORE INSERT OR UPDATE OF priority, due_from_sla
    ON work_orders FOR EACH ROW EXECUTE FUNCTION work_order_sla_due();

UPDATE work_orders SET due_at = created_at + CASE priority
    WHEN 'critical' THEN interval '4 hours'
    WHEN 'high' THEN interval '1 day'
    WHEN 'medium' THEN interval '3 days'
    ELSE interval '7 days' END;
ALTER TABLE work_orders ALTER COLUMN due_at SET NOT NULL;

-- The list's orders (newest, oldest, due, priority) and its most used filters.
DROP INDEX work_orders_tenant_created;
CREATE INDEX work_orders_tenant_created ON work_orders (tenant_id, created_at DESC, id DESC);
CREATE INDEX work_orders_tenant_status ON work_orders (tenant_id, status, created_at DESC, id DESC);
CREATE INDEX work_orders_tenant_due ON work_orders (tenant_id, due_at, id) WHERE closed_at IS NULL;
CREATE INDEX work_orders_tenant_priority
    ON work_orders (tenant_id, priority_rank DESC, created_at DESC, id DESC);
CREATE INDEX work_orders_assignee_user ON work_orders (tenant_id, assignee_user, created_at DESC)
    WHERE assignee_user IS NOT NULL;
CREATE INDEX work_orders_assignee_team ON work_orders (tenant_id, assignee_team, created_at DESC)
    WHERE assignee_team IS NOT NULL;
CREATE INDEX work_orders_requested_by ON work_orders (tenant_id, requested_by, created_at DESC)
    WHERE requested_by IS NOT NULL;
CREATE INDEX work_orders_asset ON work_orders (tenant_id, asset_id, created_at DESC);
CREATE INDEX work_orders_search ON work_orders USING gin (search);
CREATE INDEX assets_parent ON assets (tenant_id, parent_id);

-- Who caused an event: NULL for the rules engine's.
ALTER TABLE work_order_events ADD COLUMN actor uuid REFERENCES users (id);

-- Labour: who worked how long, when.
CREATE TABLE work_order_time_logs (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    work_order_id  uuid NOT NULL REFERENCES work_orders (id),
    user_id        uuid NOT NULL REFERENCES users (id),
    started_at     timestamptz NOT NULL,
    minutes        integer NOT NULL CHECK (minutes BETWEEN 1 AND 1440),
    note           text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX work_order_time_logs_order ON work_order_time_logs (work_order_id, started_at);

CREATE TABLE work_order_checklist_items (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    work_order_id  uuid NOT NULL REFERENCES work_orders (id),
    position       integer NOT NULL CHECK (position >= 0),
    text           text NOT NULL CHECK (length(text) BETWEEN 1 AND 500),
    done_at        timestamptz,
    done_by        uuid REFERENCES users (id),
    UNIQUE (work_order_id, position),
    CHECK ((done_at IS NULL) = (done_by IS NULL))
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['teams', 'team_members', 'sla_policies', 'work_order_time_logs',
                             'work_order_checklist_items']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_current_tenant()) '
                       'WITH CHECK (tenant_id = app_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON teams, team_members, sla_policies,
    work_order_checklist_items TO maintainpro_app;
-- Time logs are labour records: added, never changed or removed.
GRANT SELECT, INSERT ON work_order_time_logs TO maintainpro_app;
