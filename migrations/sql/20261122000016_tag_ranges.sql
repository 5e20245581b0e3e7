-- What a tag measures, for people: a description and the range its values are expected in
-- (engineering units). Rules do not read them; screens and imports do.

ALTER TABLE tags
    ADD COLUMN description text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    ADD COLUMN range_min double precision,
    ADD COLUMN range_max double precision,
    ADD CONSTRAINT tags_range CHECK (range_min IS NULL OR range_max IS NULL OR range_min < range_max);
ALTER TABLE tags ADD CONSTRAINT tags_unit_length CHECK (unit IS NULL OR length(unit) <= 20);
