//! `GET /ws`: a WebSocket echo on the same raw connection.
//!
//! The upgrade request is traffic like any other: it is counted and logged,
//! and the request fault applies to it first (`status:503` refuses the
//! upgrade, `hang` never answers, `latency` delays the 101). Without a valid
//! upgrade (`Upgrade: websocket`, `Connection: Upgrade`, a 16-byte
//! `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`) `/ws` answers 400.
//!
//! After the 101 every text and binary message is sent back unchanged
//! (fragments come back reassembled as one message), pings are answered with
//! pongs, and a Close from the client is answered with the same code and
//! reason. The text message `close:CODE:REASON` makes the server start the
//! close handshake itself. The mid-stream faults count echoed messages:
//! `close-mid-stream:N` drops the connection (FIN, no Close frame) after N
//! echoes, `stall-mid-stream:N` goes silent after N echoes.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::handlers::{cut_or_keep, send, Cut, Flow, Reply};
use super::http::{Conn, Request};
use super::io::SimIo;
use super::Shared;

/// Largest WebSocket message and frame the server accepts.
pub(crate) const MAX_WS_MESSAGE: usize = 64 << 20;

/// Close code recorded for a Close frame that carries none (RFC 6455 7.4.1).
const NO_STATUS_RECEIVED: u16 = 1005;

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Key` of a valid upgrade request, or why it is not one.
fn upgrade_key(req: &Request) -> Result<&str, &'static str> {
    let header = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if req.method != "GET" {
        return Err("websocket upgrade needs GET");
    }
    if !header("upgrade").any(|v| has_token(v, "websocket")) {
        return Err("missing Upgrade: websocket");
    }
    if !header("connection").any(|v| has_token(v, "upgrade")) {
        return Err("missing Connection: Upgrade");
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let mut keys = header("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key.trim(),
        _ => return Err("need exactly one Sec-WebSocket-Key"),
    };
    // Base64 of 16 bytes: 22 characters and "==".
    let base64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    if key.len() != 24 || !key.ends_with("==") || !key.bytes().take(22).all(base64) {
        return Err("Sec-WebSocket-Key must be 16 bytes in base64");
    }
    Ok(key)
}

/// Serves `/ws`: refuses a bad upgrade with 400, else answers 101 and echoes
/// until the session ends. The caller's in-flight guard covers the session.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    req: &Request,
    cut: Option<Cut>,
) -> Flow {
    let key = match upgrade_key(req) {
        Ok(key) => key,
        Err(msg) => {
            let mut reply = Reply::error(400, msg);
            reply
                .headers
                .push(("sec-websocket-version", "13".to_string()));
            let head_only = req.method == "HEAD";
            return send(shared, conn, reply, req.keep_alive, head_only, None).await;
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    // Early bytes: what the client sent past the request before our answer.
    let early = conn.read_ready().await as u64;
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {accept}\r\nx-sim-server: {}\r\n\r\n",
        shared.name
    );
    if conn.write(head.as_bytes()).await.is_err() {
        shared.count_disconnect();
        return Flow::Close;
    }
    let _session = shared.ws_opened(early);
    let pre_read = conn.take_buffered();
    match echo(shared, &mut conn.stream, pre_read, cut).await {
        End::Clean => Flow::Close,
        End::Gone => {
            shared.count_disconnect();
            Flow::Close
        }
        End::Cut => cut_or_keep(shared, conn, cut).await,
    }
}

/// How a WebSocket session ended.
enum End {
    /// A Close frame was received (and answered, unless it was the reply).
    Clean,
    /// The connection ended or failed without a Close frame.
    Gone,
    /// A mid-stream fault's message count was reached.
    Cut,
}

/// `close:CODE:REASON` as a Close frame to send.
fn close_command(text: &str) -> Option<CloseFrame> {
    let rest = text.strip_prefix("close:")?;
    let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
    let code = code.trim().parse::<u16>().ok()?;
    Some(CloseFrame {
        code: code.into(),
        reason: reason.to_string().into(),
    })
}

async fn echo(shared: &Shared, stream: &mut SimIo, pre_read: Vec<u8>, cut: Option<Cut>) -> End {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE));
    let mut ws = if pre_read.is_empty() {
        WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await
    } else {
        WebSocketStream::from_partially_read(stream, pre_read, Role::Server, Some(config)).await
    };
    let limit = match cut {
        Some(Cut::Close(n) | Cut::Stall(n) | Cut::End(n)) => Some(n),
        None => None,
    };
    let mut echoed = 0u32;
    let mut closing = false;
    loop {
        if !closing && limit == Some(echoed) {
            return End::Cut;
        }
        let msg = match ws.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "sim: websocket failed");
                return End::Gone;
            }
            None => return End::Gone,
        };
        let reply = match msg {
            Message::Text(text) => {
                shared.ws_received(text.len());
                if let Some(frame) = close_command(&text) {
                    if !closing {
                        closing = true;
                        if ws.close(Some(frame)).await.is_err() {
                            return End::Gone;
                        }
                    }
                    continue;
                }
                Message::Text(text)
            }
            Message::Binary(data) => {
                shared.ws_received(data.len());
                Message::Binary(data)
            }
            Message::Ping(_) => {
                // tungstenite has queued the pong; write it out now.
                if ws.flush().await.is_err() {
                    return End::Gone;
                }
                continue;
            }
            Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(frame) => {
                let code = frame.map_or(NO_STATUS_RECEIVED, |f| u16::from(f.code));
                shared.ws_close_received(code);
                // Writes the queued Close reply (tungstenite echoes code and
                // reason); then it reports the connection closed.
                let _ = ws.flush().await;
                return End::Clean;
            }
        };
        // Once our Close is out, data that still arrives is not echoed.
        if closing {
            continue;
        }
        if ws.send(reply).await.is_err() {
            return End::Gone;
        }
        echoed += 1;
    }
}

impl Shared {
    /// Counts a 101; the guard counts the session closed however it ends.
    fn ws_opened(self: &Arc<Self>, early_bytes: u64) -> WsSession {
        let mut c = self.counters();
        c.websockets_opened += 1;
        c.ws_bytes_before_upgrade += early_bytes;
        WsSession(self.clone())
    }

    fn ws_received(&self, payload: usize) {
        let mut c = self.counters();
        c.ws_messages += 1;
        c.ws_bytes += payload as u64;
    }

    fn ws_close_received(&self, code: u16) {
        self.counters().ws_last_close_code = Some(code);
    }
}

/// Increments `websockets_closed` when the session ends, also when the
/// server shuts down under it.
struct WsSession(Arc<Shared>);

impl Drop for WsSession {
    fn drop(&mut self) {
        self.0.counters().websockets_closed += 1;
    }
}
