-- Reproduces seed 000 ("IoT Core → Kinesis → Lambda → ElastiCache Redis → WebSocket"):
-- every message on MQTT topic `topic/sensors` increments the counter `sensorCount`,
-- is stored as `sensorLatest`, and a `PUBLISH sensors updated` tells web clients
-- to refresh. One process replaces the IoT rule, the Kinesis stream and the Lambda.
--
-- Better than the original: the Lambda did SET + INCR per record and one PUBLISH
-- per invocation; here the counter is added once per second per window, exactly
-- once even when a window is replayed (INCRBY … ONCE), and the notification goes
-- out at most once a second, however fast the sensors publish.
--
-- Needs a broker and Redis; both come from the environment, with local defaults:
--   MQTT_URL  (default mqtt://127.0.0.1:1883)
--   REDIS_URL (default redis://127.0.0.1:6379)
-- Try it: sluice simulate --topic topic/sensors --rate 50
--         redis-cli get sensorCount; redis-cli get sensorLatest; redis-cli subscribe sensors

CREATE STREAM sensor_messages (
    deviceId    TEXT,
    temperature DOUBLE,
    humidity    DOUBLE,
    deviceIP    TEXT,
    ts          TIMESTAMP
) WITH (
    connector = 'mqtt',
    url = '${MQTT_URL:-mqtt://127.0.0.1:1883}',
    topics = 'topic/sensors',
    qos = '1',
    client_id = 'sluice-seed000',
    -- On processing time, a window closes when later records arrive; after 1 s of
    -- quiet the clock closes it instead, so the count is never left behind.
    idle_timeout = '1s'
);

-- The latest message, as it came (its declared fields), on every message.
CREATE SINK sensor_latest WITH (
    connector = 'redis',
    url = '${REDIS_URL:-redis://127.0.0.1:6379}',
    commands = 'SET sensorLatest {*}'
);

CREATE QUERY sensor_latest AS
INSERT INTO sensor_latest
SELECT * FROM sensor_messages;

-- The count, per second of arrival, then the notification.
CREATE SINK sensor_count WITH (
    connector = 'redis',
    url = '${REDIS_URL:-redis://127.0.0.1:6379}',
    transaction = 'true',
    commands = 'INCRBY sensorCount {messages} ONCE {window_start}; PUBLISH sensors updated'
);

CREATE QUERY sensor_count AS
INSERT INTO sensor_count
SELECT window_start, count(*) AS messages
FROM sensor_messages
GROUP BY TUMBLE(arrival_time, INTERVAL '1' SECOND);
