//! WebSocket upgrades through the gateway, with a real client library
//! (tokio-tungstenite) against the simulated backend's echo endpoint.

use crate::harness::*;
use ballast::sim::SimServer;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

type Ws = WebSocketStream<TcpStream>;
const WAIT: Duration = Duration::from_secs(20);

async fn connect(gw: &Gateway) -> Ws {
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let url = format!("ws://{}/ws", gw.addr);
    let (ws, resp) = timeout(WAIT, client_async_with_config(url, tcp, Some(config)))
        .await
        .expect("handshake in time")
        .expect("handshake through the gateway");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next data or control message (bounded wait).
async fn next(ws: &mut Ws) -> Message {
    timeout(WAIT, ws.next())
        .await
        .expect("a message in time")
        .expect("stream still open")
        .expect("a valid message")
}

async fn gateway(sim: &SimServer, route_extra: &str) -> Gateway {
    Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[sim.addr().to_string()], ""),
        route_toml("r", "/", "p", route_extra)
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_every_kind_pass_both_ways() {
    let a = sim("a").await;
    let gw = gateway(&a, "").await;
    let mut ws = connect(&gw).await;
    assert_eq!(
        gw.metric("ballast_streams_active", &[("kind", "websocket")])
            .await,
        1.0
    );

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));

    // 16 MiB in one message.
    let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next(&mut ws).await {
        Message::Binary(b) => assert!(b[..] == big[..], "16 MiB message changed in transit"),
        other => panic!("expected the big binary echo, got {other:?}"),
    }

    // A message in three fragments (raw frames, passed through untouched).
    for (i, part) in ["frag", "men", "ted"].iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let mut frame = Frame::message(part.as_bytes().to_vec(), opcode, i == 2);
        frame.header_mut().is_final = i == 2;
        ws.send(Message::Frame(frame)).await.unwrap();
    }
    assert_eq!(next(&mut ws).await, Message::text("fragmented"));

    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );

    // Close codes travel both ways.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4000);
            assert_eq!(f.reason.as_str(), "bye");
        }
        other => panic!("expected the echoed close, got {other:?}"),
    }
    wait_until("backend never got the close code", || {
        a.stats().ws_last_close_code == Some(4000)
    })
    .await;
    gw.wait_metric("ballast_streams_active", &[("kind", "websocket")], 0.0)
        .await;
    assert_eq!(
        a.stats().ws_messages,
        4,
        "text, binary, 16 MiB, fragmented: {:?}",
        a.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_close_reaches_the_client() {
    let a = sim("a").await;
    let gw = gateway(&a, "").await;
    let mut ws = connect(&gw).await;
    ws.send(Message::text("close:4001:server-bye"))
        .await
        .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4001);
            assert_eq!(f.reason.as_str(), "server-bye");
        }
        other => panic!("expected the backend's close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_outlives_the_http_timeouts() {
    let a = sim("a").await;
    let gw = gateway(
        &a,
        "[route.timeouts]\nfirst_byte = \"200ms\"\nstream_idle = \"200ms\"",
    )
    .await;
    let mut ws = connect(&gw).await;
    // Silent for far longer than first_byte and stream_idle: still open.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_closes_a_silent_socket() {
    let a = sim("a").await;
    let gw = gateway(&a, "[route.timeouts]\nwebsocket_idle = \"300ms\"").await;
    let mut ws = connect(&gw).await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("one"));
    // Then silence: the gateway closes both sides.
    let end = timeout(WAIT, ws.next()).await.expect("closed in time");
    let data = matches!(&end, Some(Ok(Message::Text(_) | Message::Binary(_))));
    assert!(!data, "{end:?}");
    wait_until("backend side left open", || a.stats().websockets_closed > 0).await;
}

/// A client that sends WebSocket bytes right behind its upgrade request
/// (request smuggling, CVE-2026-2833 class) must not get them to the
/// backend before the backend has accepted the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_reaches_the_backend_before_its_101() {
    let a = sim("a").await;
    // The backend takes its time to accept, so early bytes would be seen.
    a.set_fault(latency(Duration::from_millis(300)));
    let gw = gateway(&a, "").await;

    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut wire = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    // A masked text frame "early" sent in the same write.
    let mask = [1u8, 2, 3, 4];
    wire.extend_from_slice(&[0x81, 0x80 | 5]);
    wire.extend_from_slice(&mask);
    wire.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&wire).await.unwrap();

    // The 101, then the echo of the early frame, once the switch was made.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(5).any(|w| w == b"early") {
        let n = timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(
        a.stats().ws_bytes_before_upgrade,
        0,
        "bytes crossed before the 101"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_an_ordinary_response() {
    let a = sim("a").await;
    a.set_fault(status(403));
    let gw = gateway(&a, "").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let url = format!("ws://{}/ws", gw.addr);
    match timeout(WAIT, tokio_tungstenite::client_async(url, tcp))
        .await
        .unwrap()
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected the backend's 403, got {other:?}"),
    }
    assert_eq!(
        gw.metric("ballast_streams_active", &[("kind", "websocket")])
            .await,
        0.0
    );
}
