-- The batch ledger is kept only as long as a copy of a batch could still be stored: ingest
-- refuses a reading older than ingest.max_reading_age (and one further ahead than
-- ingest.max_clock_ahead), so a copy of a batch delivered again after both have passed since
-- the batch was stored becomes an old_timestamp dead letter, never a second copy of its
-- readings. Ingest's hourly upkeep deletes ledger rows older than that.
CREATE INDEX ingest_batches_received ON ingest_batches (tenant_id, received_at);

-- Deletes at most max_rows ledger rows received before now() - keep, tenant by tenant (the
-- ledger's row-level security sees one tenant at a time), and returns how many it deleted.
-- SECURITY DEFINER: the application may insert ledger rows but not delete them itself.
CREATE FUNCTION prune_ingest_batches(keep interval, max_rows integer)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    caller text := current_setting('app.tenant_id', true);
    tenant uuid;
    deleted integer := 0;
    n integer;
BEGIN
    IF keep < interval '1 hour' OR max_rows < 1 THEN
        RAISE EXCEPTION 'prune_ingest_batches: keep must be at least 1 hour and max_rows at least 1';
    END IF;
    FOR tenant IN SELECT id FROM tenants ORDER BY id LOOP
        EXIT WHEN deleted >= max_rows;
        PERFORM set_config('app.tenant_id', tenant::text, true);
        DELETE FROM ingest_batches
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM ingest_batches
            WHERE tenant_id = tenant AND received_at < now() - keep
            LIMIT max_rows - deleted));
        GET DIAGNOSTICS n = ROW_COUNT;
        deleted := deleted + n;
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(caller, ''), true);
    RETURN deleted;
END
$$;
REVOKE ALL ON FUNCTION prune_ingest_batches(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_ingest_batches(interval, integer) TO maintainpro_app;
