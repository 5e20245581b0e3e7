-- Files attached to work orders: photos, reports, data sheets. The bytes live on disk under
-- `[api] attachments_dir` (<dir>/<tenant>/<id>); the row says what they are.

CREATE TABLE work_order_attachments (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    work_order_id  uuid NOT NULL REFERENCES work_orders (id),
    filename       text NOT NULL CHECK (length(filename) BETWEEN 1 AND 200),
    -- From the file's bytes, never from what the client said.
    content_type   text NOT NULL,
    size_bytes     bigint NOT NULL CHECK (size_bytes > 0),
    sha256         bytea NOT NULL CHECK (length(sha256) = 32),
    uploaded_by    uuid REFERENCES users (id),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX work_order_attachments_order ON work_order_attachments (tenant_id, work_order_id, created_at);

ALTER TABLE work_order_attachments ENABLE ROW LEVEL SECURITY;
ALTER TABLE work_order_attachments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON work_order_attachments USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
GRANT SELECT, INSERT, DELETE ON work_order_attachments TO maintainpro_app;
