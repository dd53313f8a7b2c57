-- Reproduces pipeline 1 of seed 004 ("AWS IoT Pipelines in Action"): devices publish
-- their status on MQTT topics `sensors/<deviceId>`; the IoT rule sent it to Kinesis,
-- a Lambda kept readings with temperature > 30 and put them into the DynamoDB table
-- `warning_events`, keyed by deviceId. Here one query does the rule's and the
-- Lambda's work, and the table is an embedded one: each device's latest warning,
-- kept under the data directory and readable over HTTP:
--   curl 'http://127.0.0.1:8080/tables/warning_events/items?pk=<deviceId>'
--   curl 'http://127.0.0.1:8080/tables/warning_events/items?limit=100'
--
-- For the real DynamoDB table, replace the sink with (the table must exist, with
-- partition key deviceId of type S; credentials from the standard AWS chain):
--   CREATE SINK warning_events WITH (
--       connector = 'dynamodb', table = 'warning_events', partition_key = 'deviceId',
--       region = '${AWS_REGION:-us-east-1}'
--   );
-- and, to read the readings from the Kinesis stream the IoT rule feeds instead of
-- MQTT, the stream with:
--   WITH (connector = 'kinesis', stream = 'iot-readings', region = '${AWS_REGION:-us-east-1}')
--
-- Needs a broker, from the environment with a local default:
--   MQTT_URL (default mqtt://127.0.0.1:1883)
-- Try it: sluice simulate --topic sensors/1 --devices 20 --rate 10

CREATE STREAM device_status (
    deviceId    TEXT,
    temperature DOUBLE,
    humidity    DOUBLE,
    deviceIP    TEXT,
    ts          TIMESTAMP,
    topic       TEXT METADATA
) WITH (
    connector = 'mqtt',
    url = '${MQTT_URL:-mqtt://127.0.0.1:1883}',
    topics = 'sensors/+',
    qos = '1',
    client_id = 'sluice-seed004'
);

-- Same item model as DynamoDB: a new warning for a device replaces its previous one
-- (the Lambda's put_item), so a replay after a restart changes nothing.
CREATE SINK warning_events WITH (
    connector = 'table',
    table = 'warning_events',
    partition_key = 'deviceId'
);

CREATE QUERY hot_devices AS
INSERT INTO warning_events
SELECT coalesce(deviceId, topic(2))        AS deviceId,
       temperature, humidity, deviceIP,
       coalesce(ts, arrival_time)          AS ts
FROM device_status
WHERE temperature > 30;
