-- Erasure of a user's personal data (GDPR art. 17) with their references kept: the user row
-- stays (its id is what work orders, events, time logs and audit entries point at) with its
-- name, email and credentials replaced, and the personal data the append-only tables hold
-- about them (addresses in the audit log, the email a notification went to) removed by
-- erase_user_trail below, the one way the application can change those rows.

ALTER TABLE users ADD COLUMN erased_at timestamptz;

-- The owner changes audit rows through this policy only; the app role has no UPDATE grant on
-- audit_log, so the log stays append-only for it.
CREATE POLICY audit_erase ON audit_log FOR UPDATE
    USING (tenant_id = app_current_tenant()) WITH CHECK (tenant_id = app_current_tenant());

-- Removes what the audit log and the notification log hold about a user of the current
-- tenant: the client address and any email in the detail of the entries they made or that
-- name their email (failed logins), and the address of mails sent to them. Returns the rows
-- changed. SECURITY DEFINER: the app role may not update those tables itself; the function
-- reaches the current tenant's rows only (row-level security applies to the owner too).
CREATE FUNCTION erase_user_trail(p_user uuid, p_email text, p_pseudonym text)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    tenant uuid := app_current_tenant();
    audit_rows bigint;
    mail_rows bigint;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'erase_user_trail needs the tenant set';
    END IF;
    UPDATE audit_log
       SET ip = NULL,
           detail = CASE WHEN detail ? 'email' THEN jsonb_set(detail, '{email}', to_jsonb(p_pseudonym))
                         ELSE detail END - 'user_agent'
     WHERE tenant_id = tenant
       AND (actor_user = p_user OR lower(detail->>'email') = lower(p_email))
       AND (ip IS NOT NULL OR detail ? 'email' OR detail ? 'user_agent');
    GET DIAGNOSTICS audit_rows = ROW_COUNT;
    UPDATE notifications SET email = p_pseudonym
     WHERE tenant_id = tenant AND (user_id = p_user OR lower(email) = lower(p_email));
    GET DIAGNOSTICS mail_rows = ROW_COUNT;
    RETURN audit_rows + mail_rows;
END
$$;
REVOKE EXECUTE ON FUNCTION erase_user_trail(uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION erase_user_trail(uuid, text, text) TO maintainpro_app;
