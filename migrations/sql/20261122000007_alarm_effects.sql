-- What an alarm event does to the CMMS, as two functions the work-order service calls in one
-- statement each: `alarm_raised_effects` (a raise or an escalation) and `alarm_cleared_effects`.
-- Done statement by statement from the service, an alarm event cost about ten round trips
-- between the service and the server; a function makes it one.
--
-- Both run as their caller (SECURITY INVOKER), so row-level security applies to the app role
-- as it did to the statements they replace: the caller sets the tenant for the transaction
-- (`set_config('app.tenant_id', ...)`), every row they read is that tenant's, and every row
-- they write must be. They name a tenant too, which they write into the rows; a tenant other
-- than the transaction's is refused by the policies' WITH CHECK. Their search path is pinned,
-- and only the app role may call them.
--
-- The decisions the service keeps: the priority (severity x asset criticality), the texts of
-- the work order and the event details up to what only the database knows, and the ids of new
-- rows. The decisions made here, as the service made them before:
-- - An idempotency key already on a work order, a work-order event or an alarm: nothing
--   changes (`duplicate`).
-- - A raise while its rule is shelved on its tag: the alarm is recorded as suppressed,
--   carrying the key, and no work order is opened or touched (`suppressed`).
-- - One active alarm row per rule and tag: a raise for an alarm still recorded active reuses
--   that row and takes the raise's severity.
-- - One open work order per asset and failure mode: a raise is appended to it, clears its
--   healthy-period countdown and raises its priority if the raise is more urgent (the order
--   low < medium < high < critical, as `model::alarm::decide`) (`appended`); otherwise a work
--   order is opened, flagged `repeat_of` the latest one of its asset and failure mode if that
--   closed at or after `p_repeat_since` (NULL: whenever it closed) (`created`).
-- - A clear marks the alarm cleared and leaves a note on the open work order; if nobody has
--   started on it and no other alarm of its failure mode is active, it is due to close by
--   itself at `p_auto_close_at` (`cleared`).

-- What a function did: `outcome` is one of 'duplicate', 'suppressed', 'appended', 'created',
-- 'cleared'; the other fields are set where that outcome has them.
CREATE TYPE alarm_effect AS (
    outcome        text,
    work_order     uuid,
    escalated      boolean,
    shelved_until  timestamptz,
    auto_close_at  timestamptz
);

-- A UTC time as the service writes times into event details (chrono's RFC 3339 form: `Z`, and
-- only the sub-second digits needed: none, milliseconds or microseconds). PL/pgSQL rather than
-- SQL: a SQL function with a SET clause is planned again at every call.
CREATE FUNCTION alarm_effect_time(t timestamptz) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    us CONSTANT bigint := extract(microseconds FROM t AT TIME ZONE 'UTC')::bigint % 1000000;
BEGIN
    RETURN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN us = 0 THEN ''
                   WHEN us % 1000 = 0 THEN '.' || lpad((us / 1000)::text, 3, '0')
                   ELSE '.' || lpad(us::text, 6, '0') END
           || 'Z';
END
$$;

-- A raise, or an escalation (a raise at a higher severity under the escalation's own key).
-- `p_detail` is the detail of the event it adds, without `alarm_id`.
CREATE FUNCTION alarm_raised_effects(
    p_tenant uuid,
    p_key text,
    p_rule_id text,
    p_tag_id bigint,
    p_asset_id uuid,
    p_failure_mode text,
    p_severity text,
    p_value double precision,
    p_raised_at timestamptz,
    p_detail jsonb,
    -- The ids of the alarm row and the work order, should they be new.
    p_new_alarm uuid,
    p_new_work_order uuid,
    -- The work order to open, should none be open.
    p_title text,
    p_description text,
    p_priority text,
    p_work_type text,
    p_repeat_since timestamptz,
    p_repeat_window_s bigint
) RETURNS alarm_effect
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = public, pg_temp
AS $$
DECLARE
    result alarm_effect;
    levels CONSTANT text[] := ARRAY['low', 'medium', 'high', 'critical'];
    shelf_until timestamptz;
    alarm uuid;
    event_detail jsonb;
    open_id uuid;
    open_priority text;
    previous_id uuid;
    previous_closed_at timestamptz;
BEGIN
    result.escalated := false;
    IF EXISTS (SELECT 1 FROM work_orders WHERE idempotency_key = p_key
               UNION ALL SELECT 1 FROM work_order_events WHERE idempotency_key = p_key
               UNION ALL SELECT 1 FROM alarms WHERE idempotency_key = p_key) THEN
        result.outcome := 'duplicate';
        RETURN result;
    END IF;

    SELECT max(s.until) INTO shelf_until FROM alarm_shelves s
     WHERE s.tenant_id = p_tenant AND s.rule_id = p_rule_id AND s.tag_id = p_tag_id
       AND s.ended_at IS NULL AND s.until > now();

    -- A suppressed raise touches no work order: its key on the alarm row is what makes a
    -- redelivery of it a no-op.
    INSERT INTO alarms (id, tenant_id, rule_id, tag_id, asset_id, failure_mode, severity, state,
                        trigger_value, raised_at, suppressed, idempotency_key)
    VALUES (p_new_alarm, p_tenant, p_rule_id, p_tag_id, p_asset_id, p_failure_mode, p_severity,
            'active', p_value, p_raised_at, shelf_until IS NOT NULL,
            CASE WHEN shelf_until IS NOT NULL THEN p_key END)
    ON CONFLICT (tenant_id, rule_id, tag_id) WHERE state = 'active' DO NOTHING
    RETURNING id INTO alarm;
    IF alarm IS NULL THEN
        SELECT a.id INTO STRICT alarm FROM alarms a
         WHERE a.tenant_id = p_tenant AND a.rule_id = p_rule_id AND a.tag_id = p_tag_id
           AND a.state = 'active';
        UPDATE alarms a SET severity = p_severity WHERE a.id = alarm AND a.severity <> p_severity;
    END IF;
    IF shelf_until IS NOT NULL THEN
        result.outcome := 'suppressed';
        result.shelved_until := shelf_until;
        RETURN result;
    END IF;

    event_detail := p_detail || jsonb_build_object('alarm_id', alarm);
    SELECT w.id, w.priority INTO open_id, open_priority FROM work_orders w
     WHERE w.tenant_id = p_tenant AND w.asset_id = p_asset_id AND w.failure_mode = p_failure_mode
       AND w.status NOT IN ('completed', 'verified', 'cancelled')
       FOR UPDATE;
    IF open_id IS NOT NULL THEN
        INSERT INTO work_order_events (tenant_id, work_order_id, kind, detail, idempotency_key)
        VALUES (p_tenant, open_id, 'alarm_repeated', event_detail, p_key);
        -- The condition is back: whatever healthy period was running is over.
        UPDATE work_orders w SET auto_close_at = NULL
         WHERE w.id = open_id AND w.auto_close_at IS NOT NULL;
        result.escalated := coalesce(array_position(levels, p_priority)
                                     > array_position(levels, open_priority), false);
        IF result.escalated THEN
            UPDATE work_orders w SET priority = p_priority, updated_at = now() WHERE w.id = open_id;
            INSERT INTO work_order_events (tenant_id, work_order_id, kind, detail)
            VALUES (p_tenant, open_id, 'escalated', jsonb_build_object('priority', p_priority));
        END IF;
        result.outcome := 'appended';
        result.work_order := open_id;
        RETURN result;
    END IF;

    SELECT w.id, w.closed_at INTO previous_id, previous_closed_at FROM work_orders w
     WHERE w.tenant_id = p_tenant AND w.asset_id = p_asset_id AND w.failure_mode = p_failure_mode
       AND w.closed_at IS NOT NULL
     ORDER BY w.closed_at DESC
     LIMIT 1;
    IF previous_closed_at < p_repeat_since THEN
        previous_id := NULL;
    END IF;
    INSERT INTO work_orders (id, tenant_id, asset_id, title, description, priority, work_type,
                             failure_mode, source, rule_id, alarm_id, idempotency_key, repeat_of)
    VALUES (p_new_work_order, p_tenant, p_asset_id, p_title, p_description, p_priority,
            p_work_type, p_failure_mode, 'rule', p_rule_id, alarm, p_key, previous_id);
    INSERT INTO work_order_events (tenant_id, work_order_id, kind, detail)
    VALUES (p_tenant, p_new_work_order, 'opened_by_alarm', event_detail);
    IF previous_id IS NOT NULL THEN
        INSERT INTO work_order_events (tenant_id, work_order_id, kind, detail)
        VALUES (p_tenant, p_new_work_order, 'repeat_failure',
                jsonb_build_object('previous_work_order', previous_id,
                                   'previous_closed_at', alarm_effect_time(previous_closed_at),
                                   'repeat_window_s', p_repeat_window_s));
    END IF;
    result.outcome := 'created';
    result.work_order := p_new_work_order;
    RETURN result;
END
$$;

-- A clear, under the key `<raise key>:cleared`. `p_detail` is the detail of the note it
-- leaves, without `auto_close_at` and `stays_open`. `p_auto_close_at` is when the work order
-- would close by itself (NULL: `p_closes_by_itself` is false, or the time is out of range).
CREATE FUNCTION alarm_cleared_effects(
    p_tenant uuid,
    p_key text,
    p_rule_id text,
    p_tag_id bigint,
    p_asset_id uuid,
    p_failure_mode text,
    p_cleared_at timestamptz,
    p_detail jsonb,
    p_closes_by_itself boolean,
    p_auto_close_at timestamptz
) RETURNS alarm_effect
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = public, pg_temp
AS $$
DECLARE
    result alarm_effect;
    was_suppressed boolean;
    open_id uuid;
    open_status text;
    not_started boolean;
    still_active boolean;
    due timestamptz;
BEGIN
    result.escalated := false;
    IF EXISTS (SELECT 1 FROM work_orders WHERE idempotency_key = p_key
               UNION ALL SELECT 1 FROM work_order_events WHERE idempotency_key = p_key
               UNION ALL SELECT 1 FROM alarms WHERE idempotency_key = p_key) THEN
        result.outcome := 'duplicate';
        RETURN result;
    END IF;
    result.outcome := 'cleared';

    UPDATE alarms a SET state = 'cleared', cleared_at = p_cleared_at
     WHERE a.tenant_id = p_tenant AND a.rule_id = p_rule_id AND a.tag_id = p_tag_id
       AND a.state = 'active'
    RETURNING a.suppressed INTO was_suppressed;
    IF was_suppressed THEN
        -- Its raise touched no work order; neither does its clear.
        RETURN result;
    END IF;

    SELECT w.id, w.status INTO open_id, open_status FROM work_orders w
     WHERE w.tenant_id = p_tenant AND w.asset_id = p_asset_id AND w.failure_mode = p_failure_mode
       AND w.status NOT IN ('completed', 'verified', 'cancelled')
       FOR UPDATE;
    IF open_id IS NULL THEN
        RETURN result;
    END IF;
    still_active := EXISTS (SELECT 1 FROM alarms a
                             WHERE a.tenant_id = p_tenant AND a.asset_id = p_asset_id
                               AND a.failure_mode = p_failure_mode AND a.state = 'active');
    not_started := open_status IN ('open', 'assigned');
    IF not_started AND NOT still_active THEN
        due := p_auto_close_at;
    END IF;
    UPDATE work_orders w SET auto_close_at = due WHERE w.id = open_id;
    INSERT INTO work_order_events (tenant_id, work_order_id, kind, detail, idempotency_key)
    VALUES (p_tenant, open_id, 'alarm_cleared',
            p_detail || jsonb_build_object(
                'auto_close_at', alarm_effect_time(due),
                'stays_open', CASE
                    WHEN still_active THEN 'another alarm of this failure mode is still active'
                    WHEN NOT not_started THEN 'work has started: it stays with the technician'
                    WHEN NOT p_closes_by_itself THEN 'the rule does not close work orders by itself'
                END),
            p_key);
    result.work_order := open_id;
    result.auto_close_at := due;
    RETURN result;
END
$$;

REVOKE ALL ON FUNCTION alarm_effect_time(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION alarm_raised_effects(uuid, text, text, bigint, uuid, text, text,
    double precision, timestamptz, jsonb, uuid, uuid, text, text, text, text, timestamptz, bigint)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION alarm_cleared_effects(uuid, text, text, bigint, uuid, text, timestamptz,
    jsonb, boolean, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alarm_effect_time(timestamptz) TO maintainpro_app;
GRANT EXECUTE ON FUNCTION alarm_raised_effects(uuid, text, text, bigint, uuid, text, text,
    double precision, timestamptz, jsonb, uuid, uuid, text, text, text, text, timestamptz, bigint)
    TO maintainpro_app;
GRANT EXECUTE ON FUNCTION alarm_cleared_effects(uuid, text, text, bigint, uuid, text, timestamptz,
    jsonb, boolean, timestamptz) TO maintainpro_app;
