-- What rules select by besides tag names: an asset's class (e.g. `hydraulic-press`) and labels
-- (key = value) on assets and tags. A tag's labels for rules are its asset's with its own on
-- top. Keys and classes: 1-64 letters, digits, `-`, `_`, `.`; values: 1-200 characters of text.

CREATE FUNCTION labels_valid(labels jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog
    RETURN jsonb_typeof(labels) = 'object'
        AND NOT jsonb_path_exists(labels,
            '$.keyvalue() ? (!(@.key like_regex "^[A-Za-z0-9._-]{1,64}$")
                             || @.value.type() != "string"
                             || !(@.value like_regex "^[^[:cntrl:]]{1,200}$"))');

ALTER TABLE assets
    ADD COLUMN asset_class text CHECK (asset_class ~ '^[A-Za-z0-9._-]{1,64}$'),
    ADD COLUMN labels jsonb NOT NULL DEFAULT '{}' CHECK (labels_valid(labels));
CREATE INDEX assets_tenant_class ON assets (tenant_id, asset_class);

ALTER TABLE tags
    ADD COLUMN labels jsonb NOT NULL DEFAULT '{}' CHECK (labels_valid(labels));
