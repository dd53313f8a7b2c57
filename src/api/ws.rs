//! `GET /queries/{name}/ws`: a query's output, live. On connect the client first gets
//! the latest results the query kept, then every new emission, as JSON text messages
//! `{"query", "seq", "window"?: {"start", "end"}, "rows": [...]}`. A client that falls
//! more than a bounded number of messages behind is disconnected (close code 1008):
//! the query never waits for a browser.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, AppState, find_query};

pub(super) async fn upgrade(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let q = find_query(&state, &name)?;
    Ok(ws.on_upgrade(move |socket| serve(socket, q)))
}

async fn serve(mut socket: WebSocket, q: std::sync::Arc<crate::runtime::manager::QueryState>) {
    let (latest, mut rx) = q.output.subscribe();
    for m in latest {
        if socket.send(Message::Text(m.json(&q.name).into())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Ok(m) => {
                    if socket.send(Message::Text(m.json(&q.name).into())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    let frame = CloseFrame {
                        code: 1008,
                        reason: format!("too slow: {n} messages behind").into(),
                    };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            // Client messages are ignored; a close or an error ends the session.
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
