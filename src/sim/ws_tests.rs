//! Tests of the `/ws` WebSocket echo endpoint.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

use super::test_client::Client;
use super::ws::MAX_WS_MESSAGE;
use super::*;

type Ws = WebSocketStream<TcpStream>;

const WAIT: Duration = Duration::from_secs(20);

async fn start(name: &str) -> SimServer {
    let opts = SimOptions {
        name: name.to_string(),
        ..SimOptions::default()
    };
    SimServer::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// Polls `cond` until it holds (bounded).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn try_connect(s: &SimServer) -> Result<Ws, WsError> {
    let tcp = TcpStream::connect(s.addr()).await.unwrap();
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE));
    let url = format!("ws://{}/ws", s.addr());
    let (ws, resp) = timeout(WAIT, client_async_with_config(url, tcp, Some(config)))
        .await
        .expect("websocket handshake timed out")?;
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers().get("x-sim-server").unwrap(),
        s.name().as_bytes()
    );
    Ok(ws)
}

async fn connect(s: &SimServer) -> Ws {
    try_connect(s).await.unwrap()
}

async fn recv(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    timeout(WAIT, ws.next())
        .await
        .expect("no websocket message")
}

async fn recv_ok(ws: &mut Ws) -> Message {
    recv(ws)
        .await
        .expect("stream ended")
        .expect("websocket error")
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: code.into(),
        reason: reason.to_string().into(),
    }
}

#[tokio::test]
async fn echoes_text_and_binary_and_answers_client_close() {
    let s = start("ws-echo").await;
    let mut ws = connect(&s).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(recv_ok(&mut ws).await, Message::text("hello"));
    let bin = vec![0u8, 1, 2, 255];
    ws.send(Message::binary(bin.clone())).await.unwrap();
    assert_eq!(recv_ok(&mut ws).await, Message::binary(bin));

    let st = s.stats();
    assert_eq!(st.requests, 1);
    assert_eq!(st.in_flight, 1, "an open websocket is in flight");
    assert_eq!((st.websockets_opened, st.websockets_closed), (1, 0));
    assert_eq!((st.ws_messages, st.ws_bytes), (2, 9));
    assert_eq!(st.ws_bytes_before_upgrade, 0);
    assert_eq!(st.log[0].path, "/ws");
    assert!(st.log[0]
        .headers
        .iter()
        .any(|(k, v)| k == "upgrade" && v == "websocket"));

    ws.close(Some(close_frame(4000, "bye"))).await.unwrap();
    match recv_ok(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4000);
            assert_eq!(f.reason.as_str(), "bye");
        }
        other => panic!("expected the close echoed, got {other:?}"),
    }
    assert!(recv(&mut ws).await.is_none(), "server ends after the close");
    eventually("session closed", || s.stats().websockets_closed == 1).await;
    let st = s.stats();
    assert_eq!(st.ws_last_close_code, Some(4000));
    assert_eq!((st.in_flight, st.disconnects_mid_response), (0, 0));
}

#[tokio::test]
async fn sixteen_mib_message_comes_back_identical() {
    let s = start("ws-big").await;
    let mut ws = connect(&s).await;
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match recv_ok(&mut ws).await {
        Message::Binary(got) => assert!(got == big, "16 MiB echo differs"),
        other => panic!("expected binary, got {other:?}"),
    }
    assert_eq!(s.stats().ws_bytes, 16 << 20);
}

#[tokio::test]
async fn ping_gets_pong() {
    let s = start("ws-ping").await;
    let mut ws = connect(&s).await;
    ws.send(Message::Ping(b"p1".to_vec().into())).await.unwrap();
    assert_eq!(recv_ok(&mut ws).await, Message::Pong(b"p1".to_vec().into()));
    // Pings are not data messages.
    assert_eq!(s.stats().ws_messages, 0);
}

#[tokio::test]
async fn close_command_makes_the_server_close() {
    let s = start("ws-srv-close").await;
    let mut ws = connect(&s).await;
    ws.send(Message::text("close:4001:server-bye"))
        .await
        .unwrap();
    match recv_ok(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4001);
            assert_eq!(f.reason.as_str(), "server-bye");
        }
        other => panic!("expected a server close, got {other:?}"),
    }
    // Reading on sends the client's reply; the server then ends.
    assert!(recv(&mut ws).await.is_none());
    eventually("session closed", || s.stats().websockets_closed == 1).await;
    let st = s.stats();
    assert_eq!(st.ws_last_close_code, Some(4001), "the client's reply");
    assert_eq!(st.disconnects_mid_response, 0);
}

#[tokio::test]
async fn ws_without_a_valid_upgrade_is_400() {
    let s = start("ws-bad").await;
    let mut c = Client::connect(&s).await;
    c.send("GET", "/ws", "", "").await;
    assert_eq!(c.response().await.unwrap().status, 400);
    let bad_version = "upgrade: websocket\r\nconnection: Upgrade\r\n\
        sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 8\r\n";
    c.send("GET", "/ws", bad_version, "").await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    let bad_key = "upgrade: websocket\r\nconnection: Upgrade\r\n\
        sec-websocket-key: short\r\nsec-websocket-version: 13\r\n";
    c.send("GET", "/ws", bad_key, "").await;
    assert_eq!(c.response().await.unwrap().status, 400);
    // The connection stays usable.
    c.send("GET", "/a", "", "").await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let st = s.stats();
    assert_eq!((st.requests, st.websockets_opened, st.in_flight), (4, 0, 0));
}

#[tokio::test]
async fn request_faults_apply_to_the_upgrade() {
    let s = start("ws-fault").await;
    s.set_fault(Fault::new("status:503".parse().unwrap()).times(1));
    match try_connect(&s).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 503),
        Err(other) => panic!("expected a 503, got {other:?}"),
        Ok(_) => panic!("upgrade should be refused"),
    }
    assert_eq!(s.stats().websockets_opened, 0);

    s.set_fault(Fault::new(FaultKind::CloseMidStream { after_tokens: 1 }).times(1));
    let mut ws = connect(&s).await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(recv_ok(&mut ws).await, Message::text("one"));
    ws.send(Message::text("two")).await.unwrap();
    // The server drops the connection without a Close frame.
    assert!(!matches!(recv(&mut ws).await, Some(Ok(_))));
    eventually("session closed", || s.stats().websockets_closed == 1).await;
    let st = s.stats();
    assert_eq!((st.requests, st.websockets_opened), (2, 1));
    assert_eq!(st.ws_last_close_code, None);

    s.set_fault(Fault::new(FaultKind::Hang).times(1));
    let mut c = Client::connect(&s).await;
    c.send("GET", "/ws", UPGRADE_HEADERS, "").await;
    assert!(timeout(Duration::from_millis(200), c.head()).await.is_err());
    assert_eq!((s.stats().in_flight, s.stats().websockets_opened), (1, 1));
    drop(c);
    eventually("hang released", || s.stats().in_flight == 0).await;
}

const UPGRADE_HEADERS: &str = "upgrade: websocket\r\nconnection: Upgrade\r\n\
    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n";

/// A client frame: FIN, `opcode`, masked with a fixed key.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x11u8, 0x22, 0x33, 0x44];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

#[tokio::test]
async fn bytes_sent_before_the_101_are_counted_and_not_lost() {
    let s = start("ws-early").await;
    // A latency fault holds the 101 back while the early frame arrives.
    s.set_fault(Fault::latency(Duration::from_millis(50)));
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    let mut raw = format!("GET /ws HTTP/1.1\r\nhost: sim\r\n{UPGRADE_HEADERS}\r\n").into_bytes();
    let frame = masked_frame(0x1, b"early");
    raw.extend_from_slice(&frame);
    tcp.write_all(&raw).await.unwrap();

    let expected = b"\x81\x05early";
    let mut got = Vec::new();
    let head_end = loop {
        let mut tmp = [0u8; 4096];
        let n = timeout(WAIT, tcp.read(&mut tmp)).await.unwrap().unwrap();
        assert!(
            n > 0,
            "server closed early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&tmp[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= i + 4 + expected.len() {
                break i + 4;
            }
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455's sample key and accept value.
    assert!(head.contains("\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_eq!(&got[head_end..], expected, "the early frame is echoed");
    let st = s.stats();
    assert_eq!(st.ws_bytes_before_upgrade, frame.len() as u64);
    assert_eq!((st.ws_messages, st.ws_bytes), (1, 5));
}
