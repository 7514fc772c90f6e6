//! Host names in `pool.servers.addr` follow DNS while the gateway runs: a
//! test-controlled name server changes a name's answer from one address
//! to two and back, and the second server gets traffic, then drains and
//! disappears, with no client request failing; a failed lookup keeps the
//! last good addresses.

use crate::harness::*;
use ballast::sim::{SimOptions, SimServer};
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::{rdata::A, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A name server on loopback that answers A queries from a table the test
/// changes (TTL 1 s), or fails every query while told to.
pub struct TestDns {
    pub addr: SocketAddr,
    answers: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    failing: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answers: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
        let failing = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (answers, failing, queries) = (answers.clone(), failing.clone(), queries.clone());
            async move {
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let mut reply = Message::new();
                    reply.set_id(query.id());
                    reply.set_message_type(MessageType::Response);
                    reply.set_op_code(query.op_code());
                    reply.set_recursion_desired(query.recursion_desired());
                    reply.set_recursion_available(true);
                    reply.add_queries(query.queries().to_vec());
                    if failing.load(Ordering::Relaxed) {
                        reply.set_response_code(ResponseCode::ServFail);
                    } else {
                        for q in query.queries() {
                            let name = q.name().to_ascii().trim_end_matches('.').to_lowercase();
                            let ips = answers.lock().unwrap().get(&name).cloned();
                            match (ips, q.query_type()) {
                                (None, _) => reply.set_response_code(ResponseCode::NXDomain),
                                (Some(ips), RecordType::A) => {
                                    for ip in ips {
                                        let rdata = RData::A(A(ip));
                                        reply.add_answer(Record::from_rdata(
                                            q.name().clone(),
                                            1,
                                            rdata,
                                        ));
                                    }
                                    &mut reply
                                }
                                // Known name, no record of that type.
                                (Some(_), _) => &mut reply,
                            };
                        }
                    }
                    if let Ok(bytes) = reply.to_vec() {
                        let _ = socket.send_to(&bytes, from).await;
                    }
                }
            }
        });
        TestDns {
            addr,
            answers,
            failing,
            queries,
            task,
        }
    }

    pub fn answer(&self, name: &str, ips: &[Ipv4Addr]) {
        self.answers
            .lock()
            .unwrap()
            .insert(name.into(), ips.to_vec());
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const STREAM: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

/// Two simulated backends on the same port of two loopback addresses.
async fn two_addresses() -> (SimServer, SimServer) {
    let opts = SimOptions {
        tokens: 8,
        token_interval: Duration::from_millis(10),
        ..SimOptions::default()
    };
    for _ in 0..20 {
        let a = SimServer::start(
            "127.0.0.1:0".parse().unwrap(),
            SimOptions {
                name: "a".into(),
                ..opts.clone()
            },
        )
        .await
        .unwrap();
        let second = SocketAddr::from(([127, 0, 0, 2], a.addr().port()));
        if let Ok(b) = SimServer::start(
            second,
            SimOptions {
                name: "b".into(),
                ..opts.clone()
            },
        )
        .await
        {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_follow_the_names_answers_without_a_failed_request() {
    let dns = TestDns::start().await;
    let (a, b) = two_addresses().await;
    let port = a.addr().port();
    dns.answer("backend.test", &[Ipv4Addr::new(127, 0, 0, 1)]);
    let name = format!("backend.test:{port}");
    let member_a = format!("{name} (127.0.0.1)");
    let member_b = format!("{name} (127.0.0.2)");
    let gw = Gateway::start_server(
        &format!("resolver = [\"{}\"]", dns.addr),
        &format!(
            "{}{}",
            pool_toml(
                "p",
                std::slice::from_ref(&name),
                "resolve_interval = \"200ms\"\nmax_fails = 0\n\
                 [pool.health]\ninterval = \"1s\"\nrise = 2\nfall = 2"
            ),
            route_toml("r", "/", "p", "")
        ),
    )
    .await;
    gw.wait_server(&member_a, "up", |s| s["state"] == "up")
        .await;
    assert_eq!(gw.server_status(&member_a).await["name"], name);

    // Clients keep streaming the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if !whole_stream(&client, &url, STREAM).await {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    dns.answer(
        "backend.test",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
    );
    wait_until("the second address never got traffic", || {
        b.stats().requests >= 5
    })
    .await;
    // It was checked before it was used.
    assert!(b.stats().health_checks >= 1);

    dns.answer("backend.test", &[Ipv4Addr::new(127, 0, 0, 1)]);
    gw.wait_unlisted(&member_b).await;
    let served_by_b = b.stats().requests;
    let before = done.load(Ordering::Relaxed);
    wait_until("requests stopped", || {
        done.load(Ordering::Relaxed) >= before + 10
    })
    .await;
    assert_eq!(
        b.stats().requests,
        served_by_b,
        "a drained server got new requests"
    );
    assert_eq!(b.stats().in_flight, 0);
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("127.0.0.2"),
        "series of the removed server stay:\n{metrics}"
    );

    // A failing lookup keeps the last good address.
    dns.failing.store(true, Ordering::Relaxed);
    gw.wait_metric_at_least(
        "ballast_dns_resolutions_total",
        &[("pool", "p"), ("result", "error")],
        2.0,
    )
    .await;
    let before = done.load(Ordering::Relaxed);
    wait_until("requests stopped", || {
        done.load(Ordering::Relaxed) >= before + 10
    })
    .await;
    assert_eq!(gw.server_status(&member_a).await["state"], "up");

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "client requests failed"
    );
    assert!(dns.queries.load(Ordering::Relaxed) >= 3);
    assert!(gw.log().contains("keeping the last good addresses"));
}
