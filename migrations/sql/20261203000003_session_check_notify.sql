-- Announces, on the channel maintainpro_session_checks with the organisation's id, every
-- change that can change an access token's session check: a session revoked, expired or
-- removed; a user's role or disabled flag changed, or a user removed; a custom role's
-- permissions or name changed, or the role removed. API processes that remember session
-- checks forget the organisation's when they hear it (api/src/session_cache.rs). NOTIFY is
-- sent at commit, and only once per transaction and organisation.

CREATE FUNCTION session_check_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('maintainpro_session_checks', OLD.tenant_id::text);
    IF TG_OP = 'UPDATE' AND NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
        PERFORM pg_notify('maintainpro_session_checks', NEW.tenant_id::text);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION session_check_changed() FROM PUBLIC;

CREATE TRIGGER session_check_changed AFTER UPDATE ON sessions FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.user_id IS DISTINCT FROM NEW.user_id
          OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION session_check_changed();
CREATE TRIGGER session_check_removed AFTER DELETE ON sessions FOR EACH ROW
    EXECUTE FUNCTION session_check_changed();

CREATE TRIGGER session_check_changed AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.role IS DISTINCT FROM NEW.role
          OR OLD.disabled IS DISTINCT FROM NEW.disabled
          OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION session_check_changed();
CREATE TRIGGER session_check_removed AFTER DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION session_check_changed();

CREATE TRIGGER session_check_changed AFTER UPDATE ON custom_roles FOR EACH ROW
    WHEN (OLD.permissions IS DISTINCT FROM NEW.permissions
          OR OLD.name IS DISTINCT FROM NEW.name
          OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION session_check_changed();
CREATE TRIGGER session_check_removed AFTER DELETE ON custom_roles FOR EACH ROW
    EXECUTE FUNCTION session_check_changed();

-- Emptying a table in one go announces nothing row by row: a TRUNCATE announces every
-- organisation (the payload `*`, which makes listeners forget everything).
CREATE FUNCTION session_check_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('maintainpro_session_checks', '*');
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION session_check_truncated() FROM PUBLIC;
CREATE TRIGGER session_check_truncated AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION session_check_truncated();
CREATE TRIGGER session_check_truncated AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION session_check_truncated();
CREATE TRIGGER session_check_truncated AFTER TRUNCATE ON custom_roles
    FOR EACH STATEMENT EXECUTE FUNCTION session_check_truncated();
