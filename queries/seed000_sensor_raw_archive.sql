-- The Firehose half of seed 000 ("… → Kinesis Data Firehose → S3"): every message of
-- the seed stream (`sensor_messages`, declared in seed000_sensor_count.sql, which
-- loads first) archived as Parquet, queryable at once with ad hoc SQL:
--
--   sluice query "SELECT hour, count(*) FROM sensor_archive GROUP BY hour"
--   curl -d '{"sql": "SELECT * FROM sensor_archive WHERE dt = ''2026-11-21'' LIMIT 10"}' \
--        http://127.0.0.1:8080/query
--
-- Better than the original: columnar (zstd Parquet with the stream's types, not
-- JSON text), partitioned by hour so a query on one hour reads one hour, and named by
-- content so a replay rewrites instead of duplicating.
--
-- Where: <data_dir>/archive/sensor_archive by default; set ARCHIVE_URL (for example
-- s3://my-bucket/sensors) to write to S3 instead (credentials from the standard AWS
-- environment). Buffering: 64 MB or 60 s, whichever comes first, and on shutdown.

CREATE SINK sensor_archive WITH (
    connector = 'archive',
    url = '${ARCHIVE_URL:-}',
    format = 'parquet',
    flush_size_mb = '64',
    flush_interval = '60s',
    -- Firehose partitions by arrival; so does this archive (the readings' own `ts`
    -- may be missing or wrong on a cheap sensor).
    partition_by = 'received_at'
);

CREATE QUERY sensor_archive AS
INSERT INTO sensor_archive
SELECT *, arrival_time AS received_at FROM sensor_messages;
