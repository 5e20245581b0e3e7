-- What each stored batch said (model::wire::Batch::content_digest), for batches their
-- publisher numbers: a later batch with the same (gateway, seq) but another digest is not a
-- redelivery but a second batch numbered alike (a publisher's counter that started over), and
-- is kept as a dead letter (sequence_reused) instead of being skipped as a duplicate. NULL for
-- batches numbered by their content (Sparkplug B, JSON without seq) and those stored before.
ALTER TABLE ingest_batches ADD COLUMN digest bigint;
