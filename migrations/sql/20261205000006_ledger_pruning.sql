-- The batch ledger keeps a batch's number only as long as a copy of the batch could still be
-- stored: ingest refuses readings older than its ingest.max_reading_age (or further ahead
-- than ingest.max_clock_ahead), so once both have passed since a batch was stored, a copy
-- delivered again has only readings it sets aside as old_timestamp, never a second copy of
-- them. The ingest process that stores a batch sets how long its number is kept
-- (keep_until), from its own settings, so that processes serving different organisations
-- with different settings each keep what they need. Rows from before this migration have
-- none and are kept.
ALTER TABLE ingest_batches ADD COLUMN keep_until timestamptz;
CREATE INDEX ingest_batches_keep_until ON ingest_batches (tenant_id, keep_until);

-- Deletes at most max_rows ledger rows whose keep_until has passed, tenant by tenant (the
-- ledger's row-level security sees one tenant at a time), and returns how many it deleted.
-- SECURITY DEFINER: the application may insert ledger rows but not delete them itself; this
-- deletes nothing a copy could still need.
CREATE FUNCTION prune_ingest_batches(max_rows integer)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    caller text := current_setting('app.tenant_id', true);
    tenant uuid;
    deleted integer := 0;
    n integer;
BEGIN
    IF max_rows < 1 THEN
        RAISE EXCEPTION 'prune_ingest_batches: max_rows must be at least 1';
    END IF;
    FOR tenant IN SELECT id FROM tenants ORDER BY id LOOP
        EXIT WHEN deleted >= max_rows;
        PERFORM set_config('app.tenant_id', tenant::text, true);
        DELETE FROM ingest_batches
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM ingest_batches
            WHERE tenant_id = tenant AND keep_until < now()
            LIMIT max_rows - deleted));
        GET DIAGNOSTICS n = ROW_COUNT;
        deleted := deleted + n;
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(caller, ''), true);
    RETURN deleted;
END
$$;
REVOKE ALL ON FUNCTION prune_ingest_batches(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_ingest_batches(integer) TO maintainpro_app;
