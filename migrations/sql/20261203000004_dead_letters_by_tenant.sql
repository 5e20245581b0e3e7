-- The dead-letter list reads an organisation's dead letters newest first, by id: this index
-- serves it without walking other organisations' rows.
CREATE INDEX dead_letters_tenant_id ON dead_letters (tenant_id, id);
