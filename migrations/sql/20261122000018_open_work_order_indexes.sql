-- Lists of open work orders (the commonest filter) by assignee and by asset, served from
-- indexes over the open ones only. The list adds `closed_at IS NULL` to a status filter of
-- open statuses only (the same rows, by work_orders_closed_consistent), so that the planner
-- can use them.
CREATE INDEX work_orders_open_assignee ON work_orders (tenant_id, assignee_user, due_at, id)
    WHERE closed_at IS NULL;
CREATE INDEX work_orders_open_asset ON work_orders (tenant_id, asset_id, created_at DESC, id DESC)
    WHERE closed_at IS NULL;
