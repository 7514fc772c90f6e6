//! A client that stops reading cannot hold a backend slot: after
//! `timeouts.client_write` without progress the response is abandoned,
//! the backend connection closed and the slot given to the next request.

use crate::harness::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

/// A backend that answers `/big` with a 256 MiB body as fast as it can be
/// taken and anything else with a short one; counts `/big` answers cut off.
async fn big_backend() -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicU32::new(0));
    let cut_seen = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let cut = cut_seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut conn).await else {
                    return;
                };
                if !head.starts_with(b"GET /big ") {
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                let total = 256usize << 20;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..total / chunk.len() {
                    if conn.write_all(&chunk).await.is_err() {
                        cut.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (addr, cut)
}

/// One backend, one slot, a queue to wait in, and a short client_write.
async fn one_slot_gateway(backend: std::net::SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "{}[pool.queue]\nmax_wait = \"30s\"\n{}[route.timeouts]\nclient_write = \"1s\"\n",
        pool_toml("p", &[backend.to_string()], "max_conns = 1"),
        route_toml("r", "/", "p", "")
    ))
    .await
}

/// The only slot is held by a reader that stopped; the next request waits
/// for it and gets it once the stalled response is abandoned.
async fn next_request_gets_the_slot(gw: &Gateway) {
    let r = gw.client.get(gw.url("/small")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        gw.metric(
            "ballast_stream_aborts_total",
            &[("reason", "client_stalled")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_frees_its_slot_after_client_write() {
    let (backend, cut) = big_backend().await;
    let gw = one_slot_gateway(backend).await;

    // A client with a tiny receive window asks for a big answer and never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gw.addr).await.unwrap();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    gw.wait_metric("ballast_upstream_outstanding", &[("pool", "p")], 1.0)
        .await;

    next_request_gets_the_slot(&gw).await;
    // The backend saw its connection closed mid-answer (it can stop).
    wait_until("backend saw the disconnect", || {
        cut.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_reader_with_a_zero_window_frees_its_slot_too() {
    let (backend, cut) = big_backend().await;
    let gw = one_slot_gateway(backend).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/big", gw.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    // The head arrives (it is not flow-controlled); the body never can.
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);

    next_request_gets_the_slot(&gw).await;
    wait_until("backend saw the disconnect", || {
        cut.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(client);
}
