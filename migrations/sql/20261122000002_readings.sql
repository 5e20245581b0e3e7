-- Readings storage: a TimescaleDB hypertable when the extension is installed in this database
-- (the bootstrap step creates it when the server has it), otherwise native PostgreSQL range
-- partitioning by day. Both expose the same table `readings` and the same function
-- `ensure_readings_partitions`, which is a no-op on TimescaleDB.
--
-- Readings carry no tenant column: a reading belongs to its tag, and the application reaches
-- readings only through the `tenant_readings` view, which joins the tenant-scoped `tags` table.
-- The application role may INSERT (COPY) into `readings` but not read it directly.

CREATE TABLE readings_layout (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    layout    text NOT NULL CHECK (layout IN ('timescaledb', 'native_partitions'))
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        CREATE TABLE readings (
            tag_id   bigint NOT NULL,
            ts       timestamptz NOT NULL,
            value    double precision NOT NULL,
            quality  smallint NOT NULL
        );
        PERFORM create_hypertable('readings', 'ts', chunk_time_interval => interval '1 day');
        CREATE INDEX readings_tag_ts ON readings (tag_id, ts DESC);
        ALTER TABLE readings SET (timescaledb.compress,
                                  timescaledb.compress_segmentby = 'tag_id',
                                  timescaledb.compress_orderby = 'ts');
        PERFORM add_compression_policy('readings', interval '7 days');
        PERFORM add_retention_policy('readings', interval '730 days');
        INSERT INTO readings_layout (layout) VALUES ('timescaledb');
    ELSE
        CREATE TABLE readings (
            tag_id   bigint NOT NULL,
            ts       timestamptz NOT NULL,
            value    double precision NOT NULL,
            quality  smallint NOT NULL
        ) PARTITION BY RANGE (ts);
        CREATE INDEX readings_tag_ts ON readings (tag_id, ts DESC);
        -- Rows outside every daily partition (far past, far future) are kept here, never lost.
        CREATE TABLE readings_default PARTITION OF readings DEFAULT;
        INSERT INTO readings_layout (layout) VALUES ('native_partitions');
    END IF;
END
$$;

-- Creates the daily partitions covering [today - days_back, today + days_ahead] (UTC) that do
-- not exist yet, and returns how many it created. A day whose rows already sit in the default
-- partition is skipped (those rows stay queryable there). SECURITY DEFINER: runs as the owner,
-- so the application can keep partitions ahead of time without owning the table.
CREATE FUNCTION ensure_readings_partitions(days_back integer, days_ahead integer)
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
                'CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
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

SELECT ensure_readings_partitions(7, 3);

-- The only way the application reads readings: through tags, which row-level security scopes
-- to the current tenant. The view runs with its owner's rights and tags has FORCEd RLS, so the
-- owner sees only the current tenant's tags here too.
CREATE VIEW tenant_readings AS
    SELECT r.tag_id, r.ts, r.value, r.quality
    FROM readings r
    JOIN tags t ON t.id = r.tag_id;

REVOKE ALL ON readings FROM PUBLIC;
GRANT INSERT ON readings TO maintainpro_app;
GRANT SELECT ON tenant_readings TO maintainpro_app;
GRANT SELECT ON readings_layout TO maintainpro_app;
REVOKE ALL ON FUNCTION ensure_readings_partitions(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_readings_partitions(integer, integer) TO maintainpro_app;
