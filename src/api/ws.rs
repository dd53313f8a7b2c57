//! `GET /queries/{name}/ws`: a query's output, live. On connect the client first gets
//! the latest results the query kept, then every new emission, as JSON text messages
//! `{"query", "seq", "window"?: {"start", "end"}, "rows": [...]}`. A client that falls
//! more than [`SUBSCRIBER_BUFFER`] messages behind is disconnected (close code 1008),
//! also while a send to it is stuck because it stopped reading: the query never waits
//! for a browser. When the query is dropped, its sockets close (code 1000).
//!
//! Every session ends with the close handshake: the server's close frame goes out
//! after what is already on its way (a client that stopped reading gets it when it
//! reads again, within [`CLOSE_GRACE`]) and the server waits for the client's answer;
//! a client's own close frame is answered before the connection is let go. So a
//! client sees the code and reason, never 1006 "closed without a close frame",
//! unless it stays away longer than the grace.

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
/// How long the close handshake may take: the close frame of a client that stopped
/// reading waits behind what fills its socket buffers until it reads again. Long
/// enough for a paused tab or a stalled network to come back and learn why it was
/// dropped; short enough that a client gone for good holds nothing for long (the
/// query let go of it before: only this task and the socket's buffers wait).
const CLOSE_GRACE: Duration = Duration::from_secs(30);

pub(super) async fn upgrade(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let q = find_query(&state, &name)?;
    Ok(ws.on_upgrade(move |socket| serve(socket, q)))
}

enum End {
    /// The client sent its close frame: it gets the answer.
    ClientClosed,
    /// The connection failed: nothing more can be sent.
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
                    Some(Ok(Message::Close(_))) => break 'session End::ClientClosed,
                    None | Some(Err(_)) => break 'session End::ClientGone,
                    Some(Ok(_)) => {}
                },
            }
        }
    };
    drop(rx);
    let frame = match end {
        End::ClientGone => return,
        // tungstenite queued the answer when it read the client's frame; it goes out
        // below, as the socket is read to its end.
        End::ClientClosed => None,
        End::TooSlow(n) => Some(CloseFrame {
            code: close_code::POLICY,
            reason: format!("too slow: {n} messages behind").into(),
        }),
        End::QueryGone => Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "the query was dropped".into(),
        }),
    };
    close(socket, frame).await;
}

/// The close handshake, bounded by [`CLOSE_GRACE`]: sends `frame` (when the server
/// closes), then reads until the connection ends. Reading is what flushes the answer
/// to a client's close frame, and what takes in the client's answer to ours (after
/// which tungstenite reports the end); messages still arriving are dropped.
async fn close(mut socket: WebSocket, frame: Option<CloseFrame>) {
    let handshake = async {
        if let Some(frame) = frame
            && socket.send(Message::Close(Some(frame))).await.is_err()
        {
            return;
        }
        while let Some(Ok(_)) = socket.recv().await {}
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, handshake).await;
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
