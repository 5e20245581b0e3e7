-- Alarm lifecycle after the raise: replayed history, automatic closing of work orders whose
-- condition cleared before anyone started on them, and repeat failures.

-- An alarm whose condition began and cleared inside data replayed after an outage is recorded
-- (state 'cleared', replayed) but opens no work order. Such rows carry the raise's
-- idempotency key, so a replay seen twice records it once.
ALTER TABLE alarms
    ADD COLUMN replayed boolean NOT NULL DEFAULT false,
    ADD COLUMN idempotency_key text,
    ADD CONSTRAINT alarms_idempotency_key UNIQUE (tenant_id, idempotency_key);
CREATE INDEX alarms_asset_history ON alarms (tenant_id, asset_id, raised_at DESC);

-- How a closed work order ended. `cleared_automatically`: the condition cleared and stayed
-- clear for the rule's healthy period before work started. `no_fault_found`: a technician
-- found nothing wrong. Backtests count only `fixed` (or no resolution on a completed work
-- order) as a confirmed failure.
ALTER TABLE work_orders
    ADD COLUMN resolution text
        CHECK (resolution IN ('fixed', 'no_fault_found', 'cleared_automatically', 'duplicate', 'other')),
    ADD COLUMN closed_at timestamptz,
    -- Set while the condition has cleared and the work order waits out the healthy period;
    -- a new alarm of the same failure mode, or work starting, unsets it.
    ADD COLUMN auto_close_at timestamptz,
    -- The earlier work order of the same asset and failure mode closed within the rule's
    -- repeat window before this one opened.
    ADD COLUMN repeat_of uuid REFERENCES work_orders (id),
    ADD CONSTRAINT work_orders_closed_consistent
        CHECK ((closed_at IS NULL) = (status NOT IN ('completed', 'verified', 'cancelled')));
CREATE INDEX work_orders_auto_close ON work_orders (tenant_id, auto_close_at)
    WHERE auto_close_at IS NOT NULL;
CREATE INDEX work_orders_failure_history ON work_orders (tenant_id, asset_id, failure_mode, closed_at DESC)
    WHERE closed_at IS NOT NULL;
