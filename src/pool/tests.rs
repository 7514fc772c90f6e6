use super::*;
use crate::config::{Balance, PoolConfig, QueueConfig, ServerConfig};
use crate::outcome::Outcome;

fn pool(servers: &[(u16, u32)], max_fails: u32) -> Pool {
    Pool::new(&pool_config(servers, max_fails), None, None)
}

fn pool_config(servers: &[(u16, u32)], max_fails: u32) -> PoolConfig {
    PoolConfig {
        name: "p".into(),
        max_fails,
        fail_timeout: Duration::from_secs(10),
        max_conns: 0,
        host: None,
        tls: false,
        sni: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        http2: crate::config::Http2Mode::Auto,
        api_key_env: None,
        api_key_header: http::header::AUTHORIZATION,
        resolve_interval: Duration::from_secs(30),
        balance: Balance::LeastOutstanding,
        continuation: Default::default(),
        probe_interval: None,
        load_metrics: None,
        affinity_header: None,
        affinity: crate::config::AffinityConfig::default(),
        health: None,
        queue: QueueConfig {
            max_depth: 100,
            max_wait: Duration::from_secs(10),
        },
        servers: servers
            .iter()
            .map(|&(port, weight)| ServerConfig {
                addr: format!("127.0.0.1:{port}"),
                host: "127.0.0.1".into(),
                port,
                is_name: false,
                resolved: vec![([127, 0, 0, 1], port).into()],
                weight,
                max_conns: 0,
            })
            .collect(),
    }
}

#[test]
fn leases_count_outstanding_and_release_on_drop() {
    let p = pool(&[(1, 1), (2, 1)], 3);
    let now = Instant::now();
    let a = p.acquire(now, &[]).unwrap();
    let b = p.acquire(now, &[]).unwrap();
    // Least outstanding: the second lease goes to the other server.
    assert_ne!(a.id(), b.id());
    assert_eq!(
        p.servers()[0].outstanding() + p.servers()[1].outstanding(),
        2
    );
    drop(a);
    drop(b);
    assert_eq!(p.servers()[0].outstanding(), 0);
    assert_eq!(p.servers()[1].outstanding(), 0);
}

#[test]
fn ejected_server_is_skipped_then_probed_once() {
    let p = pool(&[(1, 1), (2, 1)], 1);
    let t0 = Instant::now();
    p.servers()[0].record(true, t0);
    for _ in 0..20 {
        let l = p.acquire(t0, &[]).unwrap();
        assert_eq!(l.id(), p.servers()[1].id);
    }
    let later = t0 + Duration::from_secs(10);
    // Make server 1 busy so the probe target is the cheaper choice only by rule.
    let mut seen_probe = 0;
    let mut held = Vec::new();
    for _ in 0..5 {
        let l = p.acquire(later, &[]).unwrap();
        if l.id() == p.servers()[0].id {
            assert!(l.is_probe());
            seen_probe += 1;
        }
        held.push(l);
    }
    assert_eq!(seen_probe, 1, "exactly one probe while it is in flight");
}

#[test]
fn probe_success_reopens_server() {
    let p = pool(&[(1, 1)], 1);
    let t0 = Instant::now();
    p.servers()[0].record(true, t0);
    assert!(p.acquire(t0, &[]).is_err());
    let later = t0 + Duration::from_secs(10);
    let mut probe = p.acquire(later, &[]).unwrap();
    assert!(probe.is_probe());
    assert!(
        p.acquire(later, &[]).is_err(),
        "second request must wait for the probe"
    );
    probe.record(Outcome::Status(200), later);
    drop(probe);
    assert_eq!(p.servers()[0].availability(later), Availability::Usable);
}

#[test]
fn abandoned_probe_frees_the_slot() {
    let p = pool(&[(1, 1)], 1);
    let t0 = Instant::now();
    p.servers()[0].record(true, t0);
    let later = t0 + Duration::from_secs(10);
    drop(p.acquire(later, &[]).unwrap());
    assert!(p.acquire(later, &[]).unwrap().is_probe());
}

#[test]
fn no_server_reports_time_until_ejection_ends() {
    let p = pool(&[(1, 1)], 1);
    let t0 = Instant::now();
    p.servers()[0].record(true, t0);
    let err = p.acquire(t0 + Duration::from_secs(4), &[]).err().unwrap();
    assert_eq!(err.retry_after, Duration::from_secs(6));
}

#[test]
fn client_errors_never_eject() {
    let p = pool(&[(1, 1)], 1);
    let now = Instant::now();
    for code in [400, 404, 429] {
        let mut l = p.acquire(now, &[]).unwrap();
        l.record(Outcome::Status(code), now);
    }
    assert_eq!(p.servers()[0].availability(now), Availability::Usable);
    let mut l = p.acquire(now, &[]).unwrap();
    l.record(Outcome::Status(502), now);
    drop(l);
    assert!(p.acquire(now, &[]).is_err());
}

#[test]
fn health_down_takes_server_out_and_a_pass_admits_a_probe() {
    let p = pool(&[(1, 1)], 1);
    let now = Instant::now();
    assert_eq!(p.servers()[0].record_health(false), Transition::WentDown);
    assert_eq!(p.servers()[0].availability(now), Availability::Down);
    assert_eq!(p.servers()[0].record_health(true), Transition::CameUp);
    p.servers()[0].record(true, now);
    assert!(matches!(
        p.servers()[0].availability(now),
        Availability::Ejected { .. }
    ));
    p.servers()[0].record_health(true);
    let later = Instant::now();
    assert_eq!(p.servers()[0].availability(later), Availability::Probe);
    // The probe request succeeds: the server is back for all.
    let mut lease = p.acquire(later, &[]).unwrap();
    assert!(lease.is_probe());
    lease.record(crate::outcome::Outcome::Status(200), later);
    drop(lease);
    assert_eq!(p.servers()[0].availability(later), Availability::Usable);
}

#[test]
fn retry_prefers_untried() {
    let p = pool(&[(1, 1), (2, 1)], 3);
    let now = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            p.acquire(now, &[p.servers()[0].id]).unwrap().id(),
            p.servers()[1].id
        );
    }
}

#[test]
fn cooling_server_is_skipped_until_its_cooldown_ends() {
    let p = pool(&[(1, 1), (2, 1)], 3);
    let t0 = Instant::now();
    p.servers()[0].cool_until(t0 + Duration::from_secs(2));
    for _ in 0..20 {
        assert_eq!(p.acquire(t0, &[]).unwrap().id(), p.servers()[1].id);
    }
    assert_eq!(p.servers()[0].snapshot(t0).state, "cooling");
    assert_eq!(p.servers()[0].cooldown_left(t0), Duration::from_secs(2));
    // A shorter cooldown does not cut a longer one short.
    p.servers()[0].cool_until(t0 + Duration::from_secs(1));
    assert_eq!(p.servers()[0].cooldown_left(t0), Duration::from_secs(2));
    let later = t0 + Duration::from_secs(2);
    assert_eq!(p.servers()[0].availability(later), Availability::Usable);
}

#[test]
fn waits_are_known_for_cooling_servers_only() {
    let p = pool(&[(1, 1), (2, 1)], 1);
    let t0 = Instant::now();
    assert_eq!(p.until_ready(t0), Some(Duration::ZERO));
    assert_eq!(p.until_cooled(t0), None);
    p.servers()[0].cool_until(t0 + Duration::from_secs(3));
    p.servers()[1].record(true, t0); // ejected for 10s
    assert_eq!(p.until_ready(t0), Some(Duration::from_secs(3)));
    assert_eq!(p.until_cooled(t0), Some(Duration::from_secs(3)));
    assert_eq!(p.retry_after(t0), Duration::from_secs(3));
    // Once the cooldown is over only the ejected server is out.
    let later = t0 + Duration::from_secs(3);
    assert_eq!(p.until_ready(later), Some(Duration::ZERO));
    // An ejected server is broken, not busy: nobody waits for it.
    let q = pool(&[(1, 1)], 1);
    q.servers()[0].record(true, t0);
    assert_eq!(q.until_ready(t0), None);
    assert_eq!(q.retry_after(t0), Duration::from_secs(10));
}

#[test]
fn local_failures_neither_eject_nor_end_an_ejection() {
    let p = pool(&[(1, 1)], 1);
    let t0 = Instant::now();
    for _ in 0..5 {
        let mut l = p.acquire(t0, &[]).unwrap();
        l.record(Outcome::Local, t0);
    }
    assert_eq!(p.servers()[0].availability(t0), Availability::Usable);
    p.servers()[0].record(true, t0);
    let later = t0 + Duration::from_secs(10);
    let mut probe = p.acquire(later, &[]).unwrap();
    probe.record(Outcome::Local, later);
    drop(probe);
    // The probe told us nothing: the next request probes again.
    assert!(p.acquire(later, &[]).unwrap().is_probe());
}

fn addr(last: u8) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([10, 0, 0, last], 443))
}

#[test]
fn a_new_address_joins_and_a_vanished_one_drains_then_goes() {
    let p = pool(&[(1, 1)], 3);
    let t0 = Instant::now();
    let first = p.servers()[0].clone();
    let change = p.set_addresses(0, &[addr(1), addr(2)]);
    assert_eq!(change.added.len(), 2);
    assert_eq!(change.drained, vec!["127.0.0.1:1".to_string()]);
    let members = p.servers();
    assert_eq!(members.len(), 2);
    assert!(first.is_draining());
    assert_eq!(first.availability(t0), Availability::Draining);
    // A request in flight on the drained member keeps it listed.
    let members_before = p.servers();
    let held = p.acquire(t0, &[]).unwrap();
    assert!(members_before.iter().any(|s| s.id == held.id()));
    assert_eq!(p.snapshot(t0).servers.len(), 3);
    // Only the two new members are ever chosen.
    for _ in 0..10 {
        let l = p.acquire(t0, &[]).unwrap();
        assert_ne!(l.id(), first.id);
    }
    // The same answer again changes nothing; state is kept.
    members[0].record(true, t0);
    assert_eq!(
        p.set_addresses(0, &[addr(2), addr(1)]),
        MemberChange::default()
    );
    assert_eq!(p.servers()[0].snapshot(t0).fails, 1);
    // An empty answer keeps the last good set.
    assert_eq!(p.set_addresses(0, &[]), MemberChange::default());
    assert_eq!(p.servers().len(), 2);
    // The drained member goes once idle.
    assert_eq!(p.sweep_drained(), vec!["127.0.0.1:1".to_string()]);
    assert_eq!(p.snapshot(t0).servers.len(), 2);
    drop(held);
}

#[test]
fn a_joining_member_of_a_checked_pool_waits_for_its_first_check() {
    let mut cfg = pool_config(&[(1, 1)], 3);
    cfg.health = Some(crate::config::HealthConfig {
        path: "/health".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 2,
    });
    let p = Pool::new(&cfg, None, None);
    let t0 = Instant::now();
    // Servers there at start are up at once.
    assert_eq!(p.servers()[0].availability(t0), Availability::Usable);
    p.set_addresses(0, &[addr(1)]);
    let joined = p.servers()[0].clone();
    assert_eq!(joined.availability(t0), Availability::Down);
    assert_eq!(joined.record_health(true), Transition::CameUp);
    assert_eq!(joined.availability(t0), Availability::Usable);
}

#[test]
fn reported_load_steers_selection_while_fresh() {
    use super::server::Reported;
    let mut cfg = pool_config(&[(1, 1), (2, 1)], 3);
    cfg.load_metrics = Some(crate::config::LoadMetricsConfig {
        path: "/metrics".into(),
        interval: Duration::from_secs(1),
        max_age: Duration::from_secs(3),
        running: "r".into(),
        waiting: "w".into(),
        kv_usage: "k".into(),
    });
    let p = Pool::new(&cfg, None, None);
    let t0 = Instant::now();
    let busy = p.servers()[0].clone();
    busy.report_load(Reported {
        running: 4.0,
        waiting: 10.0,
        kv_usage: None,
        at: t0,
    });
    assert_eq!(busy.load(t0, Some(Duration::from_secs(3))), 14);
    assert_eq!(busy.load(t0, None), 0, "ignored without load_metrics");
    // Every pick avoids the server with a queue of its own.
    for _ in 0..20 {
        let lease = p.acquire(t0, &[]).unwrap();
        assert_ne!(lease.id(), busy.id);
    }
    // Once stale, the report no longer counts.
    let later = t0 + Duration::from_secs(4);
    assert_eq!(busy.load(later, Some(Duration::from_secs(3))), 0);
}

#[test]
fn sessions_hash_consistently_and_escape_overload() {
    let mut cfg = pool_config(&[(1, 1), (2, 1), (3, 1)], 1);
    cfg.affinity_header = Some(http::HeaderName::from_static("x-session-id"));
    let p = Pool::new(&cfg, None, None);
    let now = Instant::now();
    let home = |p: &Pool, s: &str| {
        p.acquire_for(now, &[], false, None, Some(s.as_bytes()))
            .unwrap()
            .id()
    };
    let sessions: Vec<String> = (0..60).map(|i| format!("session-{i}")).collect();
    let before: Vec<u64> = sessions.iter().map(|s| home(&p, s)).collect();
    // The same every time, and spread over all three.
    assert_eq!(
        before,
        sessions.iter().map(|s| home(&p, s)).collect::<Vec<_>>()
    );
    for server in p.servers().iter() {
        assert!(before.contains(&server.id), "no session on {}", server.addr);
    }
    // One server goes (ejected): only its sessions move.
    let gone = p.servers()[1].clone();
    gone.record(true, now);
    assert!(!gone.availability(now).is_usable());
    for (s, was) in sessions.iter().zip(&before) {
        let now_on = home(&p, s);
        if *was == gone.id {
            assert_ne!(now_on, gone.id);
        } else {
            assert_eq!(now_on, *was, "{s} moved though its server stayed");
        }
    }
    // A session's server busier than the least loaded by more than the
    // leeway (4 requests, and 1.5x) gives the next request away.
    let s = &sessions[0];
    let mine = home(&p, s);
    let held: Vec<_> = (0..5)
        .map(|_| {
            p.acquire_for(now, &[], false, None, Some(s.as_bytes()))
                .unwrap()
        })
        .collect();
    assert!(
        held.iter().all(|l| l.id() == mine),
        "within the leeway it stays"
    );
    let next = p
        .acquire_for(now, &[], false, None, Some(s.as_bytes()))
        .unwrap();
    assert_ne!(next.id(), mine, "overloaded: it escapes");
}

#[tokio::test]
async fn a_waiting_queue_gets_the_probe_of_a_server_back_from_ejection() {
    use crate::config::Priority;
    // One server full, the other ejected: requests wait in the queue, and
    // a finishing request never hands on a probe.
    let mut cfg = pool_config(&[(1, 1), (2, 1)], 1);
    for s in &mut cfg.servers {
        s.max_conns = 1;
    }
    let p = Pool::new(&cfg, None, None);
    let t0 = Instant::now();
    p.servers()[0].record(true, t0);
    let busy = p.acquire(t0, &[]).unwrap();
    assert_eq!(busy.id(), p.servers()[1].id);
    let limit = Duration::from_secs(60);
    let first = p.admission.join(Priority::Normal, t0, limit).unwrap();
    let second = p.admission.join(Priority::Normal, t0, limit).unwrap();

    // Still ejected: nothing to give.
    p.feed_queue(t0 + Duration::from_secs(1));
    assert_eq!(p.admission.depth(), 2);

    // The ejection is over: its one probe goes to the head of the queue,
    // and nothing else is free.
    let later = t0 + Duration::from_secs(10);
    p.feed_queue(later);
    let mut probe = first.wait().await.unwrap();
    assert_eq!(probe.id(), p.servers()[0].id);
    assert!(probe.is_probe());
    assert_eq!(p.admission.depth(), 1, "the second request still waits");

    // The probe succeeds: the server is back, and its capacity goes to
    // the queue too.
    probe.record(Outcome::Status(200), later);
    drop(probe);
    p.feed_queue(later);
    let lease = second.wait().await.unwrap();
    assert_eq!(lease.id(), p.servers()[0].id);
    assert!(!lease.is_probe());
    drop(busy);
}
