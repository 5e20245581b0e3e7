-- Announces, on the channel maintainpro_directory with the organisation's id, every change
-- that can make what ingest has resolved a message's gateway and tags to stale: a gateway or
-- a tag changed or removed; an asset's name, criticality, class or labels changed, or an
-- asset removed (the rules' context of its tags). Ingest forgets the organisation's cached
-- gateways and tags when it hears it (ingest/src/directory.rs), so that the next message
-- carries the edited context to the rules (what the engine decides at a tag's first reading,
-- which rules select it, waits for its next reload). Additions need no announcement: ingest caches only what it
-- found, and looks up every name it has not found yet. NOTIFY is sent at commit, and only
-- once per transaction and organisation.

CREATE FUNCTION directory_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('maintainpro_directory', OLD.tenant_id::text);
    IF TG_OP = 'UPDATE' AND NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
        PERFORM pg_notify('maintainpro_directory', NEW.tenant_id::text);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION directory_changed() FROM PUBLIC;

CREATE TRIGGER directory_changed AFTER UPDATE OR DELETE ON gateways FOR EACH ROW
    EXECUTE FUNCTION directory_changed();
CREATE TRIGGER directory_changed AFTER UPDATE OR DELETE ON tags FOR EACH ROW
    EXECUTE FUNCTION directory_changed();
CREATE TRIGGER directory_changed AFTER UPDATE ON assets FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name
          OR OLD.criticality IS DISTINCT FROM NEW.criticality
          OR OLD.asset_class IS DISTINCT FROM NEW.asset_class
          OR OLD.labels IS DISTINCT FROM NEW.labels
          OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION directory_changed();
CREATE TRIGGER directory_removed AFTER DELETE ON assets FOR EACH ROW
    EXECUTE FUNCTION directory_changed();

-- Emptying a table in one go announces nothing row by row: a TRUNCATE announces every
-- organisation (the payload `*`, which makes ingest forget everything).
CREATE FUNCTION directory_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('maintainpro_directory', '*');
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION directory_truncated() FROM PUBLIC;
CREATE TRIGGER directory_truncated AFTER TRUNCATE ON gateways
    FOR EACH STATEMENT EXECUTE FUNCTION directory_truncated();
CREATE TRIGGER directory_truncated AFTER TRUNCATE ON tags
    FOR EACH STATEMENT EXECUTE FUNCTION directory_truncated();
CREATE TRIGGER directory_truncated AFTER TRUNCATE ON assets
    FOR EACH STATEMENT EXECUTE FUNCTION directory_truncated();
