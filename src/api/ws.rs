//! `GET /queries/{name}/ws`: a query's output, live. On connect the client first gets
//! the latest results the query kept, then every new emission, as JSON text messages
//! `{"query", "seq", "window"?: {"start", "end"}, "rows": [...]}`. A client that falls
//! more than [`SUBSCRIBER_BUFFER`] messages behind is disconnected (close code 1008),
//! also while a send to it is stuck because it stopped reading: the query never waits
//! for a browser. When the query is dropped, its sockets close (code 1000).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::response::Response;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{ApiError, AppState, find_query};
use crate::runtime::manager::{OutputMessage, QueryState, SUBSCRIBER_BUFFER};

/// How often a send the client does not take checks how far behind the client is.
const LAG_CHECK: Duration = Duration::from_millis(100);
/// How long the close frame may wait for a client that stopped reading.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub(super) async fn upgrade(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let q = find_query(&state, &name)?;
    Ok(ws.on_upgrade(move |socket| serve(socket, q)))
}

enum End {
    /// The client closed or the connection failed: nothing more to send.
    ClientGone,
    /// So many messages behind.
    TooSlow(u64),
    /// The query was dropped (its output hub is gone).
    QueryGone,
}

async fn serve(mut socket: WebSocket, q: Arc<QueryState>) {
    // Keep the receiver, not the query: when the query is dropped its hub goes with
    // it, the receiver sees `Closed` and the socket closes.
    let name = q.name.clone();
    let (latest, mut rx) = q.output.subscribe();
    drop(q);
    let end = 'session: {
        for m in latest {
            if let Err(end) = send(&mut socket, m.json(&name), &rx).await {
                break 'session end;
            }
        }
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(m) => {
                        if let Err(end) = send(&mut socket, m.json(&name), &rx).await {
                            break 'session end;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        break 'session End::TooSlow(n + SUBSCRIBER_BUFFER as u64);
                    }
                    Err(RecvError::Closed) => break 'session End::QueryGone,
                },
                // Client messages are ignored; a close or an error ends the session.
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break 'session End::ClientGone,
                    Some(Ok(_)) => {}
                },
            }
        }
    };
    drop(rx);
    let frame = match end {
        End::ClientGone => return,
        End::TooSlow(n) => CloseFrame {
            code: close_code::POLICY,
            reason: format!("too slow: {n} messages behind").into(),
        },
        End::QueryGone => CloseFrame {
            code: close_code::NORMAL,
            reason: "the query was dropped".into(),
        },
    };
    // A client that stopped reading cannot take the frame: bounded.
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.send(Message::Close(Some(frame)))).await;
}

/// Sends one message. While the client does not take it (it stopped reading and the
/// socket buffers are full), checks whether the query ran too far ahead of it.
async fn send(
    socket: &mut WebSocket,
    text: &str,
    rx: &broadcast::Receiver<Arc<OutputMessage>>,
) -> Result<(), End> {
    let send = socket.send(Message::Text(text.into()));
    tokio::pin!(send);
    loop {
        tokio::select! {
            biased;
            sent = &mut send => return sent.map_err(|_| End::ClientGone),
            _ = tokio::time::sleep(LAG_CHECK) => {
                let behind = rx.len();
                if behind > SUBSCRIBER_BUFFER {
                    return Err(End::TooSlow(behind as u64));
                }
            }
        }
    }
}
