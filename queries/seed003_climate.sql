-- Reproduces seed 003 ("Managing IoT and Time Series Data with Amazon ElastiCache
-- for Redis"): thermostats publish {deviceId, temperature, deviceIP, humidity} to
-- MQTT topic `temp_readings`; for each reading, in one MULTI transaction:
--   INCR climate:hot|warm|cool|cold   (temperature > 85, > 75, > 65, else)
--   ZADD SensorData <timestamp ms> <deviceId>
--   HSET <deviceId> temperature humidity deviceIP climate timestamp
-- and a PUBLISH on channel `Warnings` for every hot reading.
-- The timestamp is the reading's `ts` when it has one, else its arrival time (the
-- article's Lambda used the time it ran).
--
-- Needs a broker and Redis; both come from the environment, with local defaults:
--   MQTT_URL  (default mqtt://127.0.0.1:1883)
--   REDIS_URL (default redis://127.0.0.1:6379)
-- Try it: sluice simulate --topic temp_readings --devices 5000 --rate 100
--         redis-cli mget climate:hot climate:warm climate:cool climate:cold
--         redis-cli zrevrange SensorData 0 9 withscores; redis-cli hgetall 42

CREATE STREAM temp_readings (
    deviceId    BIGINT NOT NULL,
    temperature DOUBLE NOT NULL,
    humidity    DOUBLE,
    deviceIP    TEXT,
    ts          TIMESTAMP
) WITH (
    connector = 'mqtt',
    url = '${MQTT_URL:-mqtt://127.0.0.1:1883}',
    topics = 'temp_readings',
    qos = '1',
    client_id = 'sluice-seed003'
);

CREATE SINK climate_redis WITH (
    connector = 'redis',
    url = '${REDIS_URL:-redis://127.0.0.1:6379}',
    transaction = 'true',
    commands = '
        INCRBY climate:{climate} 1;
        ZADD SensorData {timestamp} {deviceId};
        HSET {deviceId} temperature humidity deviceIP climate timestamp'
);

CREATE QUERY climate AS
INSERT INTO climate_redis
SELECT deviceId, temperature, humidity, deviceIP,
       CASE WHEN temperature > 85 THEN 'hot'
            WHEN temperature > 75 THEN 'warm'
            WHEN temperature > 65 THEN 'cool'
            ELSE 'cold' END              AS climate,
       coalesce(ts, arrival_time)        AS timestamp
FROM temp_readings;

CREATE SINK warnings_redis WITH (
    connector = 'redis',
    url = '${REDIS_URL:-redis://127.0.0.1:6379}',
    commands = 'PUBLISH Warnings {*}'
);

CREATE QUERY hot_warnings AS
INSERT INTO warnings_redis
SELECT deviceId, temperature, deviceIP, coalesce(ts, arrival_time) AS timestamp
FROM temp_readings
WHERE temperature > 85;
