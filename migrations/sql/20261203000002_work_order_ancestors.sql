-- Work-order lists of an asset subtree, served in list order from one index instead of a walk
-- of the asset tree and a probe of every asset in it.
--
-- work_order_ancestors holds one row per work order and asset at or above the work order's
-- asset: "the machine's subtree, newest first" reads the machine's rows from
-- work_order_ancestors_list in order and stops at the page's end. The rows carry the work
-- order's status (the most common filter of such lists) and whether it is open, so that an
-- open-only list of a subtree with years of closed history reads open rows only
-- (work_order_ancestors_open). Triggers keep the table true: a new work order, a work order
-- whose asset, status or creation time changes, an asset moved under another parent.
-- Measured with 1M work orders and 100k assets (BENCHMARKS.md, `cmms-bench`), each list alone
-- through pgbench (8 clients): a line's open work orders (1,000 assets below it) from 327 to
-- 6,341 transactions/s, a machine's from 1,421 to 6,811. Each work order insert writes a row
-- per level of its asset's tree (about 1.7 times the seeding time of that benchmark).

CREATE TABLE work_order_ancestors (
    -- Derived from work_orders, which holds the references: no foreign keys here, whose
    -- checks would cost a query per row of a bulk insert.
    tenant_id      uuid NOT NULL,
    ancestor_id    uuid NOT NULL,
    work_order_id  uuid NOT NULL,
    created_at     timestamptz NOT NULL,
    status         text NOT NULL,
    open           boolean NOT NULL,
    PRIMARY KEY (work_order_id, ancestor_id)
);

ALTER TABLE work_order_ancestors ENABLE ROW LEVEL SECURITY;
ALTER TABLE work_order_ancestors FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON work_order_ancestors USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
-- Written by the triggers below, which run as the caller.
GRANT SELECT, INSERT, UPDATE, DELETE ON work_order_ancestors TO maintainpro_app;

-- The assets at and above each of `assets` (itself included), as (asset_id, ancestor_id).
-- UNION, not UNION ALL: a cycle in parent links (which the API refuses) cannot loop forever.
CREATE FUNCTION asset_ancestry(p_tenant uuid, assets uuid[])
RETURNS TABLE (asset_id uuid, ancestor_id uuid)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = public, pg_temp AS $$
    WITH RECURSIVE up (asset_id, ancestor_id, parent_id) AS (
        SELECT a.id, a.id, a.parent_id FROM unnest(assets) AS s (id)
          JOIN assets a ON a.tenant_id = p_tenant AND a.id = s.id
        UNION
        SELECT up.asset_id, a.id, a.parent_id FROM up
          JOIN assets a ON a.tenant_id = p_tenant AND a.id = up.parent_id
    )
    SELECT asset_id, ancestor_id FROM up
$$;

-- New work orders, a statement at a time (a bulk insert walks each asset's ancestry once).
CREATE FUNCTION work_order_ancestors_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public, pg_temp AS $$
DECLARE
    t uuid;
BEGIN
    FOR t IN SELECT DISTINCT tenant_id FROM new_rows LOOP
        INSERT INTO work_order_ancestors
            (tenant_id, ancestor_id, work_order_id, created_at, status, open)
        SELECT w.tenant_id, up.ancestor_id, w.id, w.created_at, w.status, w.closed_at IS NULL
          FROM new_rows w
          JOIN asset_ancestry(t, ARRAY(SELECT DISTINCT asset_id FROM new_rows
                                        WHERE tenant_id = t)) up
            ON up.asset_id = w.asset_id
         WHERE w.tenant_id = t;
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER work_order_ancestors_insert AFTER INSERT ON work_orders
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION work_order_ancestors_insert();

-- A work order whose asset changed gets its rows anew; one whose status or creation time
-- changed has them updated.
CREATE FUNCTION work_order_ancestors_update() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public, pg_temp AS $$
BEGIN
    IF OLD.asset_id IS DISTINCT FROM NEW.asset_id THEN
        DELETE FROM work_order_ancestors WHERE work_order_id = OLD.id;
        INSERT INTO work_order_ancestors
            (tenant_id, ancestor_id, work_order_id, created_at, status, open)
        SELECT NEW.tenant_id, up.ancestor_id, NEW.id, NEW.created_at, NEW.status,
               NEW.closed_at IS NULL
          FROM asset_ancestry(NEW.tenant_id, ARRAY[NEW.asset_id]) up;
    ELSE
        UPDATE work_order_ancestors
           SET created_at = NEW.created_at, status = NEW.status, open = NEW.closed_at IS NULL
         WHERE work_order_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER work_order_ancestors_update AFTER UPDATE ON work_orders
    FOR EACH ROW
    WHEN (OLD.asset_id IS DISTINCT FROM NEW.asset_id
          OR OLD.status IS DISTINCT FROM NEW.status
          OR (OLD.closed_at IS NULL) <> (NEW.closed_at IS NULL)
          OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION work_order_ancestors_update();

CREATE FUNCTION work_order_ancestors_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public, pg_temp AS $$
BEGIN
    DELETE FROM work_order_ancestors a USING old_rows o WHERE a.work_order_id = o.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER work_order_ancestors_delete AFTER DELETE ON work_orders
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION work_order_ancestors_delete();

-- An asset moved under another parent: the work orders of its subtree lose the ancestors it
-- left and gain the ones it joined. The subtree itself keeps its rows.
CREATE FUNCTION work_order_ancestors_move() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public, pg_temp AS $$
BEGIN
    IF OLD.parent_id IS NOT NULL THEN
        DELETE FROM work_order_ancestors a
         WHERE a.tenant_id = OLD.tenant_id
           AND a.ancestor_id IN (SELECT ancestor_id
                                   FROM asset_ancestry(OLD.tenant_id, ARRAY[OLD.parent_id]))
           AND a.ancestor_id <> NEW.id
           AND a.work_order_id IN (SELECT work_order_id FROM work_order_ancestors
                                    WHERE tenant_id = NEW.tenant_id AND ancestor_id = NEW.id);
    END IF;
    IF NEW.parent_id IS NOT NULL THEN
        INSERT INTO work_order_ancestors
            (tenant_id, ancestor_id, work_order_id, created_at, status, open)
        SELECT s.tenant_id, up.ancestor_id, s.work_order_id, s.created_at, s.status, s.open
          FROM work_order_ancestors s
         CROSS JOIN asset_ancestry(NEW.tenant_id, ARRAY[NEW.parent_id]) up
         WHERE s.tenant_id = NEW.tenant_id AND s.ancestor_id = NEW.id
           AND up.ancestor_id <> NEW.id
        ON CONFLICT (work_order_id, ancestor_id) DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER work_order_ancestors_move AFTER UPDATE OF parent_id ON assets
    FOR EACH ROW WHEN (OLD.parent_id IS DISTINCT FROM NEW.parent_id)
    EXECUTE FUNCTION work_order_ancestors_move();

REVOKE ALL ON FUNCTION asset_ancestry(uuid, uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION work_order_ancestors_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION work_order_ancestors_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION work_order_ancestors_delete() FROM PUBLIC;
REVOKE ALL ON FUNCTION work_order_ancestors_move() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION asset_ancestry(uuid, uuid[]) TO maintainpro_app;

-- The work orders already stored, an organisation at a time (each one's rows are visible only
-- with its id set).
DO $$
DECLARE
    t uuid;
BEGIN
    FOR t IN SELECT id FROM tenants LOOP
        PERFORM set_config('app.tenant_id', t::text, true);
        INSERT INTO work_order_ancestors
            (tenant_id, ancestor_id, work_order_id, created_at, status, open)
        SELECT w.tenant_id, up.ancestor_id, w.id, w.created_at, w.status, w.closed_at IS NULL
          FROM work_orders w
          JOIN asset_ancestry(t, ARRAY(SELECT id FROM assets WHERE tenant_id = t)) up
            ON up.asset_id = w.asset_id
         WHERE w.tenant_id = t;
    END LOOP;
    PERFORM set_config('app.tenant_id', '', true);
END
$$;

-- Built after the rows above: faster than keeping them up to date row by row.
CREATE INDEX work_order_ancestors_list
    ON work_order_ancestors (tenant_id, ancestor_id, created_at DESC, work_order_id DESC)
    INCLUDE (status);
CREATE INDEX work_order_ancestors_open
    ON work_order_ancestors (tenant_id, ancestor_id, created_at DESC, work_order_id DESC)
    INCLUDE (status) WHERE open;

-- Lists of open work orders newest first, with or without other filters (priority, full-text
-- search), read open rows in order instead of every row since the start.
CREATE INDEX work_orders_open_created ON work_orders (tenant_id, created_at DESC, id DESC)
    WHERE closed_at IS NULL;
