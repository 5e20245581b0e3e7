-- Announces additions too, on the same channel as directory_notify: a new organisation, a
-- new gateway or tag, and any change of an organisation's ingest policy. Ingest remembers
-- for a while the gateway codes and tag names it did not find (and could not register), so
-- that a gateway that keeps sending one it does not know costs no lookup per message
-- (ingest/src/directory.rs); hearing of an addition, or of a policy that may now register
-- the tag or allow more tags, it forgets what it remembered of the organisation. NOTIFY is
-- sent at commit, once per transaction and organisation.

CREATE FUNCTION directory_added() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('maintainpro_directory', NEW.tenant_id::text);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION directory_added() FROM PUBLIC;

CREATE TRIGGER directory_added AFTER INSERT ON gateways FOR EACH ROW
    EXECUTE FUNCTION directory_added();
CREATE TRIGGER directory_added AFTER INSERT ON tags FOR EACH ROW
    EXECUTE FUNCTION directory_added();
-- A policy's insert or update is an addition's kind of change (it may let ingest register
-- a tag it could not before); its removal brings the default back.
CREATE TRIGGER directory_added AFTER INSERT OR UPDATE ON tenant_ingest_policy FOR EACH ROW
    EXECUTE FUNCTION directory_added();
CREATE TRIGGER directory_changed AFTER DELETE ON tenant_ingest_policy FOR EACH ROW
    EXECUTE FUNCTION directory_changed();

-- Whether a gateway's organisation exists decides where its dead letters show.
CREATE FUNCTION directory_tenant_added() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('maintainpro_directory', NEW.id::text);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION directory_tenant_added() FROM PUBLIC;

CREATE TRIGGER directory_tenant_added AFTER INSERT ON tenants FOR EACH ROW
    EXECUTE FUNCTION directory_tenant_added();
CREATE TRIGGER directory_truncated AFTER TRUNCATE ON tenant_ingest_policy
    FOR EACH STATEMENT EXECUTE FUNCTION directory_truncated();
