//! Tests against a real Redis (`PRICEFEED_TEST_REDIS_URL`), each under its own key prefix so they
//! run in parallel with each other and with end-to-end tests sharing the server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::redis_conn::RedisConn;
use pricefeed_domain::assignment::NodeId;
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_runtime::config::RedisConfig;

use crate::assignment::{self, Published};
use crate::lease::{self, Lease};
use crate::registry::{NodeRecord, Registry};

fn prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("pftest_{name}_{}_{nanos}", std::process::id())
}

async fn conn() -> RedisConn {
    let url = std::env::var("PRICEFEED_TEST_REDIS_URL")
        .expect("PRICEFEED_TEST_REDIS_URL must be set (run ./dev test)");
    crate::redis_conn::connect(&RedisConfig {
        url: pricefeed_runtime::secret::SecretUrl::new(url),
        key_prefix: "unused".into(),
        sentinel: None,
    })
    .await
    .unwrap()
}

/// Polls `cond` every 20 ms until true, failing after `deadline`.
async fn eventually<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !cond().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn lease_is_exclusive_terms_increase_and_stale_terms_are_fenced() {
    let p = prefix("lease");
    let c = conn().await;
    let mut a = Lease::new(c.clone(), &p, "a", 400);
    let mut b = Lease::new(c.clone(), &p, "b", 400);

    // Two contenders racing many times: exactly one wins each round.
    let (ra, rb) = tokio::join!(a.try_acquire(0), b.try_acquire(0));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.is_some() ^ rb.is_some(), "a={ra:?} b={rb:?}");
    let (leader, standby) = if ra.is_some() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let t1 = leader.term().unwrap();
    assert!(standby.try_acquire(0).await.unwrap().is_none());
    assert!(!standby.renew().await.unwrap(), "a standby cannot renew");
    assert!(leader.renew().await.unwrap());
    let mut cm = c.clone();
    let seen = lease::current(&mut cm, &p).await.unwrap().unwrap();
    assert_eq!(seen.term, t1);
    assert_eq!(seen.holder, leader.holder());

    // The leader publishes under its term.
    let doc = |term, epoch| Published {
        epoch,
        term,
        node_dead_after_ms: 3000,
        owners: BTreeMap::from([(
            InstrumentKey::parse("spot:BTCUSDT").unwrap(),
            NodeId::from("n1"),
        )]),
        ..Default::default()
    };
    assert!(assignment::publish(&mut cm, &p, &doc(t1, 1)).await.unwrap());

    // Leader stops renewing (a pause): the lease expires and the standby takes over, higher term.
    let until = Instant::now() + Duration::from_secs(5);
    let t2 = loop {
        if let Some(t) = standby.try_acquire(0).await.unwrap() {
            break t;
        }
        assert!(Instant::now() < until, "no takeover after expiry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(t2 > t1, "terms increase: {t1} then {t2}");
    // The old leader's renew fails now; it must stop leader work.
    assert!(!leader.renew().await.unwrap());
    assert!(standby.renew().await.unwrap());

    // The new leader publishes; a late write from the old term is refused and changes nothing.
    assert!(assignment::publish(&mut cm, &p, &doc(t2, 2)).await.unwrap());
    assert!(!assignment::publish(&mut cm, &p, &doc(t1, 3)).await.unwrap());
    let stored = assignment::read(&mut cm, &p).await.unwrap().unwrap();
    assert_eq!((stored.epoch, stored.term), (2, t2));
    assert!(stored.published_at_ms > 0);

    // Graceful handover: release lets the other side in at once, with a higher term again.
    assert!(standby.release().await.unwrap());
    let t3 = leader.try_acquire(0).await.unwrap().unwrap();
    assert!(t3 > t2);

    // A durable floor lifts the counter past a Redis that lost it.
    leader.release().await.unwrap();
    let t4 = leader.try_acquire(100).await.unwrap().unwrap();
    assert_eq!(t4, 101);
}

#[tokio::test]
async fn lease_many_contenders_one_winner() {
    let p = prefix("lease_many");
    let c = conn().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut l = Lease::new(c.clone(), &p, &format!("c{i}"), 5_000);
        tasks.push(tokio::spawn(async move { l.try_acquire(0).await.unwrap() }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(term) = t.await.unwrap() {
            winners.push(term);
        }
    }
    assert_eq!(winners, vec![1], "exactly one winner, with the first term");
}

#[tokio::test]
async fn registry_lists_ages_and_records_expire() {
    let p = prefix("registry");
    let c = conn().await;
    let mut reg = Registry::new(c.clone(), &p);
    let rec = |id: &str| NodeRecord {
        node_id: id.into(),
        addr: "127.0.0.1:1".into(),
        started_at_ms: 1,
        version: "0.1.0".into(),
    };
    reg.heartbeat(&rec("n1"), 300).await.unwrap();
    reg.heartbeat(&rec("n2"), 60_000).await.unwrap();
    let list = reg.list().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].record.as_ref(), Some(&rec("n1")));
    assert!(list.iter().all(|n| n.is_alive(3000)), "{list:?}");

    // n1 stops heartbeating: its record expires with the TTL, its entry ages until it is dead.
    eventually(Duration::from_secs(5), "n1 record expiry", || {
        let mut reg = reg.clone();
        async move { reg.list().await.unwrap()[0].record.is_none() }
    })
    .await;
    eventually(Duration::from_secs(5), "n1 dead after 400 ms", || {
        let mut reg = reg.clone();
        async move {
            reg.heartbeat(&rec("n2"), 60_000).await.unwrap();
            let l = reg.list().await.unwrap();
            !l[0].is_alive(400) && l[1].is_alive(400)
        }
    })
    .await;

    // Pruning forgets long-silent entries; deregistering removes a node at once.
    assert_eq!(reg.prune(400).await.unwrap(), 1);
    reg.deregister("n2").await.unwrap();
    assert!(reg.list().await.unwrap().is_empty());
}
