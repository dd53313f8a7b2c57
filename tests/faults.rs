//! A fault-injecting HTTP proxy between Sluice and a real AWS emulator (test support
//! for the Kinesis and DynamoDB connector tests): kinesis-local and moto never
//! throttle, so the proxy answers chosen calls with the service's own throttling error,
//! or refuses some records of a PutRecords / items of a BatchWriteItem the way the
//! service does. Refused records and items are taken out of the request before it is
//! forwarded, so they really are missing from the emulator until Sluice sends them
//! again: a connector that did not retry them would fail the test.
//!
//! Calls are picked by their `X-Amz-Target` header (`Kinesis_20131202.GetRecords`,
//! `DynamoDB_20120810.BatchWriteItem`, …). For Kinesis the proxy follows shard
//! iterators (GetShardIterator's and GetRecords' answers) so it knows which shard a
//! GetRecords call reads: rules count calls per shard and the log says the shard, which
//! lets a test check the per-shard call rate and backoff.
//!
//! Plain HTTP/1.1 with `Content-Length` bodies (what the SDK sends to an `http://`
//! endpoint); each forwarded call opens its own upstream connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to a call a rule picks.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// HTTP 400 `ProvisionedThroughputExceededException`, nothing forwarded.
    Throttle,
    /// PutRecords: every `n`th record (counted over all records the rule sees) is
    /// kept from the emulator and answered with an `ErrorCode`, like Kinesis does
    /// when a shard is over its write limit.
    RefuseRecords(u64),
    /// BatchWriteItem: every `n`th item is kept from the emulator and returned in
    /// `UnprocessedItems`.
    LeaveUnprocessed(u64),
}

/// Picks calls of one operation for a fault, until its budget is spent.
pub struct Rule {
    target: String,
    fault: Fault,
    /// Given the call's number (0-based, per shard when the shard is known), whether
    /// to apply the fault to it.
    pick: Box<dyn Fn(u64) -> bool + Send + Sync>,
    /// Throttled calls, or refused records/items, left to inject.
    budget: u64,
    /// Records or items seen by a refusing rule (picks every `n`th).
    seen: u64,
}

impl Rule {
    /// `target` is the `X-Amz-Target` value, e.g. `Kinesis_20131202.GetRecords`.
    pub fn new(
        target: &str,
        fault: Fault,
        budget: u64,
        pick: impl Fn(u64) -> bool + Send + Sync + 'static,
    ) -> Self {
        Rule {
            target: target.to_string(),
            fault,
            pick: Box::new(pick),
            budget,
            seen: 0,
        }
    }
}

/// One call through the proxy, for the test to inspect.
#[derive(Debug, Clone)]
pub struct Call {
    /// When the request arrived.
    pub at: Instant,
    /// The operation, without the service prefix (`GetRecords`).
    pub op: String,
    /// The shard a GetRecords call reads, when the proxy saw its iterator issued.
    pub shard: Option<String>,
    /// Whether the whole call was answered with a throttling error.
    pub throttled: bool,
    /// Records or items of the call the proxy refused.
    pub refused: usize,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    log: Vec<Call>,
    /// Shard iterator → shard id.
    iterators: HashMap<String, String>,
    /// Calls so far per (target, shard).
    counts: HashMap<(String, Option<String>), u64>,
}

/// The proxy: listens on a free loopback port, forwards to `upstream`.
pub struct FaultProxy {
    port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr, rules: Vec<Rule>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            rules,
            ..Default::default()
        }));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, upstream, Arc::clone(&st)));
            }
        });
        FaultProxy { port, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().log.clone()
    }

    /// Calls of one operation (`GetRecords`).
    pub fn calls_of(&self, op: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.op == op).collect()
    }

    /// What the rules have not injected yet (0 each once all faults happened).
    pub fn budgets_left(&self) -> Vec<u64> {
        self.state
            .lock()
            .unwrap()
            .rules
            .iter()
            .map(|r| r.budget)
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 message: start line, headers, body.
struct Message {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The message with `body`, its length set, hop-by-hop headers and `dropped`
    /// left out.
    fn encode(&self, body: &[u8], extra: &[(&str, &str)], dropped: &[&str]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            let skip = [
                "content-length",
                "transfer-encoding",
                "connection",
                "expect",
            ]
            .iter()
            .chain(dropped)
            .any(|d| k.eq_ignore_ascii_case(d));
            if !skip {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

/// Reads one message from `buf` + `conn`; `None` at a clean end of the connection.
/// `to_eof`: a response without a length runs to the end of the connection.
async fn read_message(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    to_eof: bool,
) -> std::io::Result<Option<Message>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 16384];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut msg = Message {
        start,
        headers,
        body: Vec::new(),
    };
    let chunked = msg
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    if let Some(len) = msg.header("content-length") {
        let len: usize = len.parse().unwrap_or(0);
        fill(conn, buf, len).await?;
        msg.body = buf.drain(..len).collect();
    } else if chunked {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(conn, buf, buf.len() + 1).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size =
                usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
            buf.drain(..line_end + 2);
            fill(conn, buf, size + 2).await?;
            msg.body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else if to_eof {
        conn.read_to_end(buf).await?;
        msg.body = std::mem::take(buf);
    }
    Ok(Some(msg))
}

/// Reads until `buf` holds at least `len` bytes.
async fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    while buf.len() < len {
        let mut chunk = [0u8; 16384];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// One client connection: requests in turn (keep-alive), each decided and forwarded.
async fn serve(mut conn: TcpStream, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    while let Ok(Some(req)) = read_message(&mut conn, &mut buf, false).await {
        let reply = match handle(&req, upstream, &state).await {
            Ok(r) => r,
            Err(e) => {
                let body = format!("fault proxy: upstream failed: {e}");
                format!(
                    "HTTP/1.1 502 Bad Gateway\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
        };
        if conn.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// What the proxy decided for one call.
enum Decision {
    Forward,
    Throttle,
    /// Positions of the records/items to refuse.
    Refuse(Vec<usize>),
}

async fn handle(
    req: &Message,
    upstream: SocketAddr,
    state: &Mutex<State>,
) -> std::io::Result<Vec<u8>> {
    let target = req.header("x-amz-target").unwrap_or_default().to_string();
    let (service, op) = target.split_once('.').unwrap_or(("", &target));
    let op = op.to_string();
    let dynamo = service.starts_with("DynamoDB");
    let mut body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let at = Instant::now();

    // Decide under the lock, forward without it.
    let (decision, shard) = {
        let mut st = state.lock().unwrap();
        let shard = body["ShardIterator"]
            .as_str()
            .and_then(|it| st.iterators.get(it).cloned());
        let n = st
            .counts
            .entry((target.clone(), shard.clone()))
            .or_insert(0);
        let index = *n;
        *n += 1;
        let mut decision = Decision::Forward;
        if let Some(rule) = st
            .rules
            .iter_mut()
            .find(|r| r.target == target && r.budget > 0 && (r.pick)(index))
        {
            decision = match rule.fault {
                Fault::Throttle => {
                    rule.budget -= 1;
                    Decision::Throttle
                }
                Fault::RefuseRecords(every) | Fault::LeaveUnprocessed(every) => {
                    let count = match rule.fault {
                        Fault::RefuseRecords(_) => body["Records"].as_array().map_or(0, Vec::len),
                        _ => body["RequestItems"]
                            .as_object()
                            .and_then(|m| m.values().next())
                            .and_then(Value::as_array)
                            .map_or(0, Vec::len),
                    };
                    let mut refused = Vec::new();
                    for i in 0..count {
                        if rule.seen % every == 0 && rule.budget > 0 {
                            refused.push(i);
                            rule.budget -= 1;
                        }
                        rule.seen += 1;
                    }
                    Decision::Refuse(refused)
                }
            };
        }
        (decision, shard)
    };

    let mut call = Call {
        at,
        op: op.clone(),
        shard: shard.clone(),
        throttled: false,
        refused: 0,
    };
    let reply = match decision {
        Decision::Throttle => {
            call.throttled = true;
            let (kind, message) = if dynamo {
                (
                    "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                    "The level of configured provisioned throughput for the table was exceeded. \
                     Consider increasing your provisioning level with the UpdateTable API."
                        .to_string(),
                )
            } else {
                (
                    "ProvisionedThroughputExceededException",
                    format!(
                        "Rate exceeded for shard {} in stream {} under account 000000000000.",
                        shard.as_deref().unwrap_or("shardId-000000000000"),
                        body["StreamName"].as_str().unwrap_or("stream")
                    ),
                )
            };
            let body = json!({"__type": kind, "message": message}).to_string();
            let content_type = if dynamo {
                "application/x-amz-json-1.0"
            } else {
                "application/x-amz-json-1.1"
            };
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: {content_type}\r\n\
                 x-amzn-requestid: fault-proxy\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        Decision::Forward => {
            let resp = forward(req, &req.body, upstream).await?;
            track_iterators(&op, &body, &resp, shard.as_deref(), state);
            resp.encode(&resp.body, &[], &[])
        }
        Decision::Refuse(refused) if refused.is_empty() => {
            let resp = forward(req, &req.body, upstream).await?;
            resp.encode(&resp.body, &[], &[])
        }
        Decision::Refuse(refused) => {
            call.refused = refused.len();
            if dynamo {
                leave_unprocessed(req, &mut body, &refused, upstream).await?
            } else {
                refuse_records(req, &mut body, &refused, upstream).await?
            }
        }
    };
    state.lock().unwrap().log.push(call);
    Ok(reply)
}

/// Sends the request with `body` upstream on a connection of its own.
async fn forward(req: &Message, body: &[u8], upstream: SocketAddr) -> std::io::Result<Message> {
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&req.encode(body, &[("connection", "close")], &[]))
        .await?;
    let mut buf = Vec::new();
    read_message(&mut up, &mut buf, true)
        .await?
        .ok_or_else(|| std::io::Error::other("upstream closed without answering"))
}

/// Learns which shard each iterator in a Kinesis answer belongs to.
fn track_iterators(
    op: &str,
    request: &Value,
    resp: &Message,
    shard: Option<&str>,
    state: &Mutex<State>,
) {
    let Ok(answer) = serde_json::from_slice::<Value>(&resp.body) else {
        return;
    };
    let (key, shard) = match op {
        "GetShardIterator" => ("ShardIterator", request["ShardId"].as_str()),
        "GetRecords" => ("NextShardIterator", shard),
        _ => return,
    };
    if let (Some(it), Some(shard)) = (answer[key].as_str(), shard) {
        state
            .lock()
            .unwrap()
            .iterators
            .insert(it.to_string(), shard.to_string());
    }
}

/// PutRecords with the records at `refused` left out upstream and answered as
/// failed, in their places, as Kinesis answers a partially failed call.
async fn refuse_records(
    req: &Message,
    body: &mut Value,
    refused: &[usize],
    upstream: SocketAddr,
) -> std::io::Result<Vec<u8>> {
    let records = body["Records"].as_array().cloned().unwrap_or_default();
    let kept: Vec<Value> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| !refused.contains(i))
        .map(|(_, r)| r.clone())
        .collect();
    let failure = json!({
        "ErrorCode": "ProvisionedThroughputExceededException",
        "ErrorMessage": format!(
            "Rate exceeded for shard shardId-000000000000 in stream {} under account 000000000000.",
            body["StreamName"].as_str().unwrap_or("stream")
        ),
    });
    let mut results: Vec<Value> = Vec::new();
    let mut start = Message {
        start: String::new(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    if !kept.is_empty() {
        body["Records"] = Value::Array(kept);
        let resp = forward(req, body.to_string().as_bytes(), upstream).await?;
        let answer: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        let Some(ok) = answer["Records"].as_array() else {
            // Not a success (the emulator refused the call): pass it on as it is.
            return Ok(resp.encode(&resp.body, &[], &[]));
        };
        results = ok.clone();
        start = resp;
    } else {
        start.start = "HTTP/1.1 200 OK".into();
        start.headers = vec![("content-type".into(), "application/x-amz-json-1.1".into())];
    }
    let mut merged = Vec::new();
    let mut ok = results.into_iter();
    for i in 0..records.len() {
        if refused.contains(&i) {
            merged.push(failure.clone());
        } else {
            merged.push(ok.next().unwrap_or(Value::Null));
        }
    }
    let answer = json!({
        "FailedRecordCount": refused.len(),
        "Records": merged,
        "EncryptionType": "NONE",
    });
    Ok(start.encode(answer.to_string().as_bytes(), &[], &[]))
}

/// BatchWriteItem with the items at `refused` left out upstream and returned in
/// `UnprocessedItems`, as DynamoDB answers when it cannot take them all.
async fn leave_unprocessed(
    req: &Message,
    body: &mut Value,
    refused: &[usize],
    upstream: SocketAddr,
) -> std::io::Result<Vec<u8>> {
    let (table, items) = body["RequestItems"]
        .as_object()
        .and_then(|m| m.iter().next())
        .map(|(t, v)| (t.clone(), v.as_array().cloned().unwrap_or_default()))
        .unwrap_or_default();
    let (held, kept): (Vec<_>, Vec<_>) = items
        .into_iter()
        .enumerate()
        .partition(|(i, _)| refused.contains(i));
    let held: Vec<Value> = held.into_iter().map(|(_, v)| v).collect();
    let kept: Vec<Value> = kept.into_iter().map(|(_, v)| v).collect();
    let mut start = Message {
        start: "HTTP/1.1 200 OK".into(),
        headers: vec![("content-type".into(), "application/x-amz-json-1.0".into())],
        body: Vec::new(),
    };
    if !kept.is_empty() {
        body["RequestItems"] = json!({ table.clone(): kept });
        let resp = forward(req, body.to_string().as_bytes(), upstream).await?;
        if !resp.start.contains(" 200 ") {
            return Ok(resp.encode(&resp.body, &[], &[]));
        }
        start = resp;
    }
    let answer = json!({ "UnprocessedItems": { table: held } });
    // The checksum DynamoDB sends is of the original body.
    Ok(start.encode(answer.to_string().as_bytes(), &[], &["x-amz-crc32"]))
}
