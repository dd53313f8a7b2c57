-- Demo: per-device temperature statistics over 10-second tumbling windows, from the
-- built-in simulator of the ElastiCache time-series article's thermostats (seed 003).
-- No broker or store needed:
--   sluice serve --queries queries     (watch it live on the dashboard, http://127.0.0.1:8080)
--   sluice run queries/demo_windows.sql (print it)
--
-- device_stats is a bare SELECT: its results go to its live output only (the
-- dashboard and GET /queries/device_stats/ws; `sluice run` prints them).
--
-- Readings arrive up to 1 s out of order (jitter); the watermark waits 2 s for them.

CREATE STREAM readings (
    deviceId    INT NOT NULL,
    temperature DOUBLE,
    humidity    DOUBLE,
    deviceIP    TEXT,
    ts          TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (
    connector = 'simulator',
    devices = '20',
    rate = '200',
    jitter = '1s',
    idle_timeout = '5s'
);

CREATE QUERY device_stats AS
SELECT window_start, window_end, deviceId,
       count(*)                    AS readings,
       round(avg(temperature), 2)  AS avg_temp,
       min(temperature)            AS min_temp,
       max(temperature)            AS max_temp
FROM readings
WHERE temperature > 50
GROUP BY TUMBLE(ts, INTERVAL '10' SECOND), deviceId
ORDER BY deviceId;
