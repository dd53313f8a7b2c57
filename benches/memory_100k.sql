-- Peak-memory benchmark: 100,000 devices, 1-minute tumbling windows, end to end
-- through the real binary (simulator source → decode → filter → window aggregate →
-- file sink). Target: peak RSS ≤ 256 MB. Results and how to run: BENCHMARKS.md.
--
--   cargo build --release
--   /usr/bin/time -v ./target/release/sluice run benches/memory_100k.sql
--
-- 5,000,000 readings at 10,000 per second of event time: 500 s of event time, so
-- nine 1-minute windows, each with ~600,000 readings over (nearly) all 100,000
-- devices; up to two windows are open at once (the 2 s watermark delay). Unthrottled:
-- the source generates as fast as the query consumes.

CREATE STREAM readings (
    deviceId    INT NOT NULL,
    temperature DOUBLE,
    humidity    DOUBLE,
    deviceIP    TEXT,
    ts          TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (
    connector = 'simulator',
    devices = '100000',
    rate = '10000',
    jitter = '1s',
    throttle = 'false',
    limit = '5000000',
    start = '2026-01-01T00:00:00Z'
);

CREATE SINK nowhere WITH (connector = 'file', path = '/dev/null');

CREATE QUERY device_stats_1m AS
INSERT INTO nowhere
SELECT window_start, window_end, deviceId,
       avg(temperature) AS avg_temp,
       min(temperature) AS min_temp,
       max(temperature) AS max_temp,
       count(*)         AS readings
FROM readings
WHERE temperature > 50
GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), deviceId;
