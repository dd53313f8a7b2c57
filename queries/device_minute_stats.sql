-- Per-device temperature over 1-minute tumbling windows on event time: avg / min /
-- max / count into one Redis hash per device and minute, and live on the query's
-- WebSocket (GET /queries/device_minute_stats/ws, and the dashboard).
--
-- Written idempotently: the hash key names the window (device:<id>:minute:<YYYYMMDDhhmm>), so a replayed window
-- overwrites its hash instead of counting twice; `device:<id>:latest` always holds
-- the newest closed minute.
--
-- Readings need their event time `ts` (epoch ms or RFC 3339), as `sluice simulate`
-- sends; the watermark waits 5 s for late ones, and a reading later than that goes to
-- the error output. Broker and Redis from MQTT_URL / REDIS_URL (local defaults).
-- Try it: sluice simulate --topic temp_readings --devices 50 --rate 200

CREATE STREAM timed_readings (
    deviceId    BIGINT NOT NULL,
    temperature DOUBLE NOT NULL,
    ts          TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
    connector = 'mqtt',
    url = '${MQTT_URL:-mqtt://127.0.0.1:1883}',
    topics = 'temp_readings',
    qos = '1',
    client_id = 'sluice-minute-stats',
    idle_timeout = '10s'
);

CREATE SINK device_minute_redis WITH (
    connector = 'redis',
    url = '${REDIS_URL:-redis://127.0.0.1:6379}',
    transaction = 'true',
    commands = '
        HSET device:{deviceId}:minute:{minute} window_start window_end avg_temp min_temp max_temp readings;
        HSET device:{deviceId}:latest window_start window_end avg_temp min_temp max_temp readings'
);

CREATE QUERY device_minute_stats AS
INSERT INTO device_minute_redis
SELECT deviceId, window_start, window_end,
       to_char(window_start, '%Y%m%d%H%M') AS minute,
       round(avg(temperature), 2) AS avg_temp,
       min(temperature)           AS min_temp,
       max(temperature)           AS max_temp,
       count(*)                   AS readings
FROM timed_readings
GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), deviceId;
