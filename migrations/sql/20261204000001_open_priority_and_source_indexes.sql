-- Two lists read far more rows than they return (EXPLAIN (ANALYZE, BUFFERS) with 1M work
-- orders, 15 % of them open; BENCHMARKS.md):
-- - open work orders, most urgent first, walked work_orders_tenant_priority over every work
--   order and dropped the closed ones: 325 buffers for a page of 50, 54 with this index;
-- - work orders by origin (`source=rule`, `manual`, `pm`), newest first, walked
--   work_orders_tenant_created and dropped the other origins: 151 buffers, 54 with the second.
CREATE INDEX work_orders_open_priority
    ON work_orders (tenant_id, priority_rank DESC, created_at DESC, id DESC)
    WHERE closed_at IS NULL;
CREATE INDEX work_orders_tenant_source ON work_orders (tenant_id, source, created_at DESC, id DESC);
