-- Parts inventory (stock per location, a movement ledger, parts planned and used on work
-- orders) and the tenant's event log that live streams and webhooks read.

CREATE TABLE stock_locations (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

-- Quantities are whole numbers of the part's unit.
CREATE TABLE parts (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    sku               text NOT NULL CHECK (sku ~ '^[A-Za-z0-9._/-]{1,64}$'),
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    unit              text NOT NULL DEFAULT 'pcs' CHECK (length(unit) BETWEEN 1 AND 20),
    unit_cost_cents   bigint NOT NULL DEFAULT 0 CHECK (unit_cost_cents >= 0),
    -- Stock of this part may go below zero (used before its receipt is booked).
    allow_negative    boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, sku),
    UNIQUE (tenant_id, id)
);

CREATE TABLE part_stock (
    tenant_id      uuid NOT NULL,
    part_id        uuid NOT NULL,
    location_id    uuid NOT NULL,
    on_hand        bigint NOT NULL DEFAULT 0,
    reserved       bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    min_qty        bigint CHECK (min_qty >= 0),
    max_qty        bigint CHECK (max_qty >= 0),
    reorder_point  bigint CHECK (reorder_point >= 0),
    PRIMARY KEY (part_id, location_id),
    FOREIGN KEY (tenant_id, part_id) REFERENCES parts (tenant_id, id),
    FOREIGN KEY (tenant_id, location_id) REFERENCES stock_locations (tenant_id, id),
    CHECK (min_qty IS NULL OR max_qty IS NULL OR min_qty <= max_qty)
);

ALTER TABLE part_stock ADD CONSTRAINT part_stock_tenant_key UNIQUE (tenant_id, part_id, location_id);

-- The ledger: one row per movement, never changed; per part and location the sums of the
-- deltas equal part_stock's on_hand and reserved.
CREATE TABLE stock_movements (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    part_id         uuid NOT NULL,
    location_id     uuid NOT NULL,
    kind            text NOT NULL
                    CHECK (kind IN ('receipt', 'adjustment', 'reservation', 'release', 'consumption')),
    on_hand_delta   bigint NOT NULL,
    reserved_delta  bigint NOT NULL,
    work_order_id   uuid REFERENCES work_orders (id),
    actor           uuid REFERENCES users (id),
    note            text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    at              timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, part_id, location_id) REFERENCES part_stock (tenant_id, part_id, location_id)
);
CREATE INDEX stock_movements_part ON stock_movements (tenant_id, part_id, id DESC);

-- Parts planned on a work order (reserved at a location) and used.
CREATE TABLE work_order_parts (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    work_order_id  uuid NOT NULL REFERENCES work_orders (id),
    part_id        uuid NOT NULL,
    location_id    uuid NOT NULL,
    planned        bigint NOT NULL CHECK (planned >= 0),
    -- What is still reserved of `planned`: released when the work order closes.
    reserved       bigint NOT NULL CHECK (reserved >= 0),
    used           bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, part_id, location_id) REFERENCES part_stock (tenant_id, part_id, location_id),
    CHECK (reserved <= planned)
);
CREATE INDEX work_order_parts_order ON work_order_parts (tenant_id, work_order_id);

-- What happened in a tenant, in order: work-order, alarm, asset and stock events, numbered per
-- tenant (`seq`) in commit order, so a reader resuming after `seq` N misses nothing. The
-- number comes from event_counters under its row lock, held to the commit.
CREATE TABLE event_counters (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    last       bigint NOT NULL
);

CREATE TABLE events (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    seq         bigint NOT NULL,
    kind        text NOT NULL CHECK (kind ~ '^[a-z_]{1,32}\.[a-z_]{1,32}$'),
    subject_id  text NOT NULL,
    payload     jsonb NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, seq)
);

-- Adds an event of the transaction's tenant and returns its number. The caller's transaction
-- holds the counter's row lock until it ends, so numbers commit in order.
CREATE FUNCTION emit_event(p_tenant uuid, p_kind text, p_subject text, p_payload jsonb)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO public.event_counters AS c (tenant_id, last) VALUES (p_tenant, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET last = c.last + 1
    RETURNING last INTO n;
    INSERT INTO public.events (tenant_id, seq, kind, subject_id, payload)
    VALUES (p_tenant, n, p_kind, p_subject, p_payload);
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION emit_event(uuid, text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION emit_event(uuid, text, text, jsonb) TO maintainpro_app;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['stock_locations', 'parts', 'part_stock', 'stock_movements',
                             'work_order_parts', 'event_counters', 'events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = app_current_tenant()) '
                       'WITH CHECK (tenant_id = app_current_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE ON stock_locations, parts, part_stock, work_order_parts,
    event_counters TO maintainpro_app;
-- The ledger and the event log: added to, never changed.
GRANT SELECT, INSERT ON stock_movements, events TO maintainpro_app;
