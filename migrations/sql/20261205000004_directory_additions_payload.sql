-- Additions (directory_additions) announce `+` and the organisation's id instead of the id
-- alone: an addition makes only what ingest looked for and did not find stale, so ingest
-- keeps the gateways and tags it found (its own registrations of tags no longer empty its
-- cache of the organisation). A removed organisation is announced as a change, so that no
-- gateway code is still taken to belong to an existing one.

CREATE OR REPLACE FUNCTION directory_added() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('maintainpro_directory', '+' || NEW.tenant_id::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION directory_tenant_added() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('maintainpro_directory', '+' || NEW.id::text);
    RETURN NULL;
END
$$;

CREATE FUNCTION directory_tenant_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('maintainpro_directory', OLD.id::text);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION directory_tenant_removed() FROM PUBLIC;

CREATE TRIGGER directory_tenant_removed AFTER DELETE ON tenants FOR EACH ROW
    EXECUTE FUNCTION directory_tenant_removed();
