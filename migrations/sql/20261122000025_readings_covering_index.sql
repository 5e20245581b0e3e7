-- The history of one tag reads from the index alone.
--
-- Readings arrive in time order, every tag of a plant each second, so a heap page holds the
-- readings of a hundred tags or more, and one tag's day is spread over as many pages as it
-- has readings: with 100 million rows (1,000 tags, one reading a second) "one tag over 24
-- hours in 1,000 points" read 86,400 heap pages and took seconds. With value and quality in
-- the index, a tag's readings lie together in its leaf pages and the query is an index-only
-- scan of a few hundred pages (measured with bench/src/bin/history-bench.rs, BENCHMARKS.md).
-- Ingest pays for the wider entries in its COPY rate, measured in the same benchmark.
--
-- On TimescaleDB the same index serves the uncompressed chunks; compressed chunks are
-- segmented by tag already.
DROP INDEX readings_tag_ts;
CREATE INDEX readings_tag_ts ON readings (tag_id, ts DESC) INCLUDE (value, quality);
