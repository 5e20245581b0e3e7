-- Autovacuum of the readings partitions at a gentler pace. Readings are only inserted, so
-- PostgreSQL vacuums a day's partition each time it has grown by a fifth (to keep the
-- visibility map current, which the history query's index-only scans need). At its default
-- pace (2 ms of sleep per 200 cost units) such a vacuum takes a whole core for seconds and
-- shows in ingest's commit latency: in `ingest-bench` on two cores, receipt-to-commit p99 at
-- 250,000 readings/s was 279-492 ms at the default and 139-295 ms with 20 ms or more, in runs
-- alternated on the same hour (BENCHMARKS.md). At 20 ms a vacuum dirties up to about 500 pages
-- a second, which keeps up with some 60,000 readings/s sustained; above that, a day's
-- partition is fully vacuumed after its day (its history reads a little slower until then).
-- Native partitions only: TimescaleDB's chunks are made by TimescaleDB.

CREATE OR REPLACE FUNCTION ensure_readings_partitions(days_back integer, days_ahead integer)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    created integer := 0;
    day date;
    name text;
BEGIN
    IF (SELECT layout FROM readings_layout) <> 'native_partitions' THEN
        RETURN 0;
    END IF;
    FOR day IN
        SELECT generate_series((now() AT TIME ZONE 'UTC')::date - days_back,
                               (now() AT TIME ZONE 'UTC')::date + days_ahead,
                               interval '1 day')::date
    LOOP
        name := format('readings_p%s', to_char(day, 'YYYYMMDD'));
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L) '
                'WITH (autovacuum_vacuum_cost_delay = 20)',
                name,
                (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE 'readings for % already sit in readings_default; partition skipped', day;
        END;
    END LOOP;
    RETURN created;
END
$$;

-- The partitions made before this migration.
DO $$
DECLARE
    part regclass;
BEGIN
    IF (SELECT layout FROM readings_layout) = 'native_partitions' THEN
        FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'readings'::regclass
        LOOP
            EXECUTE format('ALTER TABLE %s SET (autovacuum_vacuum_cost_delay = 20)', part);
        END LOOP;
    END IF;
END
$$;
