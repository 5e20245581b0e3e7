-- A key ingest gives each dead letter when it makes it. A letter written again because ingest
-- could not learn whether the transaction that wrote it committed (its connection lost, or
-- given up after ingest.database_timeout) then conflicts with the first and is skipped, so it
-- is stored once. Letters written before this migration have none.
ALTER TABLE dead_letters ADD COLUMN letter_key uuid;
CREATE UNIQUE INDEX dead_letters_letter_key ON dead_letters (letter_key);
