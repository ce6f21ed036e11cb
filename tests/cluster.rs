//! End-to-end cluster membership and slice ownership: real nodes and schedulers against real
//! Postgres and Redis. Three nodes and two schedulers share ~30 instruments; the test checks the
//! balanced single-owner assignment, then kills a node and the leading scheduler with SIGKILL and
//! measures how long the cluster takes to recover (printed, and bounded at 5 s).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pricefeed_store::protocol::Keys;
use pricefeed_tests::{
    Proc, base_env, bin, fresh_database, get_json, http_client, key_prefix, migrate, signal,
    start_nodes, start_schedulers,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);
/// The promise for both failovers.
const FAILOVER: Duration = Duration::from_secs(5);

/// Polls `check` every 50 ms until it returns `Ok`, or fails with its last complaint.
async fn poll<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let until = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) if Instant::now() > until => {
                panic!("{what}: not reached within {deadline:?}; last state: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Inserts 10 underlyings and 20 perpetuals (the instruments to assign), plus a halted
/// underlying and a delisted perpetual that must stay unassigned.
async fn seed_instruments(db: &str) -> BTreeSet<String> {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..10 {
        let u = format!("C{i:02}USDT");
        sqlx::query(
            "INSERT INTO underlyings (symbol, base_asset, quote_asset, status) \
             VALUES ($1, $2, 'USDT', 'TRADING')",
        )
        .bind(&u)
        .bind(format!("C{i:02}"))
        .execute(&pool)
        .await
        .unwrap();
        // Assignment keys are `market:SYMBOL` (docs/decisions/0005-instrument-keys.md).
        expected.insert(format!("spot:{u}"));
        for suffix in ["PERP", "PERP2"] {
            let d = format!("{u}_{suffix}");
            sqlx::query(
                "INSERT INTO derivatives (symbol, underlying_id, kind, market, contract_type, status) \
                 SELECT $1, id, 'perpetual', 'usdm', 'PERPETUAL', 'TRADING' FROM underlyings WHERE symbol = $2",
            )
            .bind(&d)
            .bind(&u)
            .execute(&pool)
            .await
            .unwrap();
            expected.insert(format!("usdm:{d}"));
        }
    }
    sqlx::query(
        "INSERT INTO underlyings (symbol, base_asset, quote_asset, status) \
         VALUES ('HALTUSDT', 'HALT', 'USDT', 'BREAK')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO derivatives (symbol, underlying_id, kind, market, contract_type, status, delisted_at) \
         SELECT 'C00USDT_GONE', id, 'perpetual', 'usdm', 'PERPETUAL', 'TRADING', now() \
         FROM underlyings WHERE symbol = 'C00USDT'",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(expected.len(), 30);
    expected
}

/// The published assignment, straight from Redis: (epoch, term, symbol → owner).
async fn published(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Result<(u64, u64, BTreeMap<String, String>), String> {
    let raw: Option<String> = redis::cmd("GET")
        .arg(Keys::new(prefix).assignment())
        .query_async(redis)
        .await
        .map_err(|e| e.to_string())?;
    let v: Value =
        serde_json::from_str(&raw.ok_or("no assignment published")?).map_err(|e| e.to_string())?;
    let owners = v["owners"]
        .as_object()
        .ok_or("owners missing")?
        .iter()
        .map(|(s, n)| (s.clone(), n.as_str().unwrap_or_default().to_string()))
        .collect();
    Ok((
        v["epoch"].as_u64().ok_or("epoch missing")?,
        v["term"].as_u64().ok_or("term missing")?,
        owners,
    ))
}

/// Every symbol owned exactly once (a map, so once at most; coverage checked here), only by
/// `nodes`, with slice sizes differing by at most one.
fn check_balanced(
    owners: &BTreeMap<String, String>,
    expected: &BTreeSet<String>,
    nodes: &[&str],
) -> Result<BTreeMap<String, usize>, String> {
    let keys: BTreeSet<String> = owners.keys().cloned().collect();
    if &keys != expected {
        return Err(format!("assigned {keys:?}, expected {expected:?}"));
    }
    let mut sizes: BTreeMap<String, usize> = nodes.iter().map(|n| (n.to_string(), 0)).collect();
    for (symbol, node) in owners {
        *sizes
            .get_mut(node)
            .ok_or_else(|| format!("{symbol} owned by {node}, not one of {nodes:?}"))? += 1;
    }
    let (min, max) = (sizes.values().min(), sizes.values().max());
    if max.unwrap() - min.unwrap() > 1 {
        return Err(format!("unbalanced slices {sizes:?}"));
    }
    Ok(sizes)
}

/// The `leader` check of a scheduler's `/readyz` ("leader term=… epoch=…" or "standby").
async fn role(http: &reqwest::Client, s: &Proc) -> String {
    get_json(http, &s.url("/readyz")).await.map_or_else(
        |e| format!("unreachable: {e}"),
        |v| v["checks"]["leader"].as_str().unwrap_or("?").to_string(),
    )
}

/// Checks `/api/v1/cluster` on each of `nodes`: same epoch as published, nothing unassigned,
/// the expected live set, slice sizes as published, a leader shown. Returns the leader's term.
async fn check_views(
    http: &reqwest::Client,
    nodes: &[&Proc],
    epoch: u64,
    alive: &[&str],
    sizes: &BTreeMap<String, usize>,
) -> Result<(u64, String), String> {
    let mut leader = None;
    for n in nodes {
        let v = get_json(http, &n.url("/api/v1/cluster")).await?;
        if v["epoch"] != epoch {
            return Err(format!(
                "{} at epoch {}, published {epoch}",
                n.name, v["epoch"]
            ));
        }
        if v["instruments"] != 30 || v["unassigned"] != 0 {
            return Err(format!("{}: {v}", n.name));
        }
        let listed = v["nodes"].as_array().ok_or("nodes missing")?;
        let live: Vec<&str> = listed
            .iter()
            .filter(|x| x["alive"] == true)
            .filter_map(|x| x["node_id"].as_str())
            .collect();
        if live != alive {
            return Err(format!("{} sees alive {live:?}, want {alive:?}", n.name));
        }
        for x in listed.iter().filter(|x| x["alive"] == true) {
            let id = x["node_id"].as_str().unwrap_or_default();
            if x["slice_size"].as_u64() != sizes.get(id).map(|s| *s as u64) {
                return Err(format!(
                    "{} reports {x} but published size {:?}",
                    n.name,
                    sizes.get(id)
                ));
            }
            if x["addr"].as_str().is_none() || x["heartbeat_age_ms"].as_i64().is_none() {
                return Err(format!("{}: incomplete node entry {x}", n.name));
            }
        }
        let l = (
            v["leader"]["term"].as_u64().ok_or("no leader")?,
            v["leader"]["holder"]
                .as_str()
                .ok_or("no leader")?
                .to_string(),
        );
        if leader.get_or_insert(l.clone()) != &l {
            return Err(format!("nodes disagree on the leader: {leader:?} vs {l:?}"));
        }
    }
    leader.ok_or_else(|| "no node answered".into())
}

#[tokio::test]
async fn slices_are_balanced_and_fail_over_after_kill_9() {
    let db = fresh_database().await.unwrap();
    let env = base_env(&db);
    let prefix = key_prefix(&env);
    migrate(&env, READY).await;
    let expected = seed_instruments(&db).await;

    let mut schedulers = start_schedulers(&["sched-a", "sched-b"], &env).await;
    let mut nodes = start_nodes(&["n1", "n2", "n3"], &env).await;
    let http = http_client(Duration::from_secs(2));
    let redis_conn = redis::Client::open(pricefeed_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // 1. Converged: one leader, every instrument owned once, balanced, all nodes agree.
    let all = ["n1", "n2", "n3"];
    let (epoch0, owners0, term0, holder0) = poll(READY, "initial convergence", || {
        let (http, redis, expected, nodes) = (&http, redis_conn.clone(), &expected, &nodes);
        let mut redis = redis;
        let prefix = &prefix;
        let schedulers = &schedulers;
        async move {
            let (epoch, term, owners) = published(&mut redis, prefix).await?;
            let sizes = check_balanced(&owners, expected, &all)?;
            let refs: Vec<&Proc> = nodes.iter().collect();
            let (lterm, holder) = check_views(http, &refs, epoch, &all, &sizes).await?;
            let mut roles = Vec::new();
            for s in schedulers {
                roles.push(role(http, s).await);
            }
            let leaders = roles.iter().filter(|r| r.starts_with("leader")).count();
            if leaders != 1
                || roles
                    .iter()
                    .any(|r| !r.starts_with("leader") && r != "standby")
            {
                return Err(format!("scheduler roles {roles:?}"));
            }
            if lterm != term {
                return Err(format!(
                    "leader term {lterm}, assignment written under {term}"
                ));
            }
            Ok((epoch, owners, term, holder))
        }
    })
    .await;
    let sizes0 = check_balanced(&owners0, &expected, &all).unwrap();
    println!("converged: epoch {epoch0}, term {term0}, slices {sizes0:?}");
    for s in &schedulers {
        let leading = role(&http, s).await.starts_with("leader");
        let text = http
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let want = format!("pricefeed_scheduler_is_leader {}", u8::from(leading));
        assert!(text.contains(&want), "{}: no `{want}` in\n{text}", s.name);
        if leading {
            let want = format!("pricefeed_assignment_epoch {epoch0}");
            assert!(text.contains(&want), "{}: no `{want}` in\n{text}", s.name);
        }
    }

    // 2. kill -9 one node: its instruments, and only those, move to the survivors within 5 s.
    let victim = nodes.pop().unwrap();
    let lost: BTreeSet<&String> = owners0
        .iter()
        .filter(|(_, n)| *n == "n3")
        .map(|(s, _)| s)
        .collect();
    assert!(!lost.is_empty());
    let t0 = Instant::now();
    signal(victim.child.id(), "KILL");
    let survivors = ["n1", "n2"];
    let (epoch1, owners1) = poll(Duration::from_secs(15), "node failover", || {
        let (http, redis, expected, nodes) = (&http, redis_conn.clone(), &expected, &nodes);
        let mut redis = redis;
        let prefix = &prefix;
        async move {
            let (epoch, _, owners) = published(&mut redis, prefix).await?;
            if epoch <= epoch0 {
                return Err(format!("still epoch {epoch}"));
            }
            let sizes = check_balanced(&owners, expected, &survivors)?;
            let refs: Vec<&Proc> = nodes.iter().collect();
            check_views(http, &refs, epoch, &survivors, &sizes).await?;
            Ok((epoch, owners))
        }
    })
    .await;
    let node_failover = t0.elapsed();
    println!(
        "node kill -9 -> {} instruments live on survivors in {} ms (epoch {epoch0} -> {epoch1})",
        lost.len(),
        node_failover.as_millis()
    );
    for (symbol, before) in &owners0 {
        let after = &owners1[symbol];
        if before == "n3" {
            assert_ne!(after, "n3");
        } else {
            assert_eq!(
                after, before,
                "{symbol} moved from a live node {before} to {after}"
            );
        }
    }
    assert!(
        node_failover <= FAILOVER,
        "node failover took {node_failover:?}, promised {FAILOVER:?}"
    );
    drop(victim);

    // 3. kill -9 the leading scheduler: the standby leads within 5 s, with a higher term.
    let mut leader_idx = None;
    for (i, s) in schedulers.iter().enumerate() {
        if role(&http, s).await.starts_with("leader") {
            leader_idx = Some(i);
        }
    }
    let leader = schedulers.remove(leader_idx.expect("a leading scheduler"));
    let standby = schedulers.pop().unwrap();
    let t0 = Instant::now();
    signal(leader.child.id(), "KILL");
    let term2 = poll(Duration::from_secs(15), "scheduler takeover", || {
        let (http, nodes, standby) = (&http, &nodes, &standby);
        let holder0 = &holder0;
        async move {
            let r = role(http, standby).await;
            if !r.starts_with("leader") {
                return Err(format!("standby is {r}"));
            }
            let v = get_json(http, &nodes[0].url("/api/v1/cluster")).await?;
            let term = v["leader"]["term"]
                .as_u64()
                .ok_or_else(|| format!("no leader: {v}"))?;
            if term <= term0 || v["leader"]["holder"] == holder0.as_str() {
                return Err(format!("leader still {}", v["leader"]));
            }
            Ok(term)
        }
    })
    .await;
    let takeover = t0.elapsed();
    println!(
        "scheduler kill -9 -> standby leads in {} ms (term {term0} -> {term2})",
        takeover.as_millis()
    );
    assert!(
        takeover <= FAILOVER,
        "takeover took {takeover:?}, promised {FAILOVER:?}"
    );

    // The new leader re-publishes under its term without reshuffling anyone.
    let (epoch2, owners2) = poll(Duration::from_secs(10), "republish by new leader", || {
        let mut redis = redis_conn.clone();
        let prefix = &prefix;
        async move {
            let (epoch, term, owners) = published(&mut redis, prefix).await?;
            if term != term2 {
                return Err(format!("assignment still under term {term}"));
            }
            Ok((epoch, owners))
        }
    })
    .await;
    assert!(epoch2 >= epoch1, "epoch went back: {epoch1} -> {epoch2}");
    assert_eq!(
        owners2, owners1,
        "a leader change alone must not move instruments"
    );

    // 4. Redis loses everything of this cluster (as a flush would): the leader rebuilds from
    //    Postgres with a higher term, the epoch does not go back and no instrument moves.
    let t0 = Instant::now();
    let mut conn = redis_conn.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (epoch3, term3) = poll(Duration::from_secs(15), "rebuild after Redis loss", || {
        let (http, nodes, expected) = (&http, &nodes, &expected);
        let mut redis = redis_conn.clone();
        let prefix = &prefix;
        async move {
            let (epoch, term, owners) = published(&mut redis, prefix).await?;
            if term <= term2 {
                return Err(format!("assignment still under term {term}"));
            }
            let sizes = check_balanced(&owners, expected, &survivors)?;
            let refs: Vec<&Proc> = nodes.iter().collect();
            check_views(http, &refs, epoch, &survivors, &sizes).await?;
            Ok((epoch, term))
        }
    })
    .await;
    println!(
        "Redis keys deleted -> rebuilt in {} ms (epoch {epoch2} -> {epoch3}, term {term2} -> {term3})",
        t0.elapsed().as_millis()
    );
    assert!(
        epoch3 >= epoch2,
        "epoch went back after Redis loss: {epoch2} -> {epoch3}"
    );
    let (_, _, owners3) = published(&mut conn, &prefix).await.unwrap();
    assert_eq!(owners3, owners1, "losing Redis must not move instruments");
    drop(leader);
}

#[tokio::test]
async fn graceful_stops_hand_over_without_waiting_for_timeouts() {
    let db = fresh_database().await.unwrap();
    let env = base_env(&db);
    let prefix = key_prefix(&env);
    migrate(&env, READY).await;
    let expected = seed_instruments(&db).await;
    let mut schedulers = start_schedulers(&["sched-a", "sched-b"], &env).await;
    let mut nodes = start_nodes(&["n1", "n2"], &env).await;
    let http = http_client(Duration::from_secs(2));
    let redis_conn = redis::Client::open(pricefeed_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let both = ["n1", "n2"];
    poll(READY, "convergence over two nodes", || {
        let mut redis = redis_conn.clone();
        let (prefix, expected) = (&prefix, &expected);
        async move {
            let (_, _, owners) = published(&mut redis, prefix).await?;
            check_balanced(&owners, expected, &both).map(|_| ())
        }
    })
    .await;

    // SIGTERM a node: it deregisters, so its slice moves at the next tick, well before the
    // 3 s dead-node timeout would have fired.
    let mut n2 = nodes.pop().unwrap();
    let t0 = Instant::now();
    let st = n2.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(st.success(), "{}", n2.log_tail());
    assert!(n2.log_text().contains("deregistered"), "{}", n2.log_tail());
    poll(
        Duration::from_secs(10),
        "slice moved after graceful stop",
        || {
            let mut redis = redis_conn.clone();
            let (prefix, expected) = (&prefix, &expected);
            async move {
                let (_, _, owners) = published(&mut redis, prefix).await?;
                check_balanced(&owners, expected, &["n1"]).map(|_| ())
            }
        },
    )
    .await;
    let moved = t0.elapsed();
    println!("node SIGTERM -> slice moved in {} ms", moved.as_millis());
    assert!(moved < Duration::from_millis(2500), "took {moved:?}");

    // SIGTERM the leader: it releases the lease, so the standby leads at its next poll instead of
    // after the lease TTL.
    let mut idx = None;
    for (i, s) in schedulers.iter().enumerate() {
        if role(&http, s).await.starts_with("leader") {
            idx = Some(i);
        }
    }
    let mut leader = schedulers.remove(idx.expect("a leader"));
    let standby = schedulers.pop().unwrap();
    let t0 = Instant::now();
    let st = leader.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(st.success(), "{}", leader.log_tail());
    assert!(
        leader.log_text().contains("lease released"),
        "{}",
        leader.log_tail()
    );
    poll(
        Duration::from_secs(10),
        "standby leads after graceful stop",
        || {
            let (http, standby) = (&http, &standby);
            async move {
                let r = role(http, standby).await;
                if r.starts_with("leader") {
                    Ok(())
                } else {
                    Err(r)
                }
            }
        },
    )
    .await;
    let took = t0.elapsed();
    println!(
        "scheduler SIGTERM -> standby leads in {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}

#[tokio::test]
async fn bad_membership_config_names_the_key() {
    let db = fresh_database().await.unwrap();
    let cases: &[(&str, &[&str], &str, &str, &str)] = &[
        (
            "pricefeed-node",
            &[],
            "PRICEFEED__NODE__HEARTBEAT_MS",
            "0",
            "node.heartbeat_ms",
        ),
        (
            "pricefeed-node",
            &[],
            "PRICEFEED__NODE__REGISTRATION_TTL_MS",
            "1500",
            "node.registration_ttl_ms",
        ),
        (
            "pricefeed-scheduler",
            &["scheduler"],
            "PRICEFEED__SCHEDULER__LEASE_RENEW_MS",
            "2000",
            "scheduler.lease_renew_ms",
        ),
        (
            "pricefeed-scheduler",
            &["scheduler"],
            "PRICEFEED__SCHEDULER__NODE_DEAD_AFTER_MS",
            "soon",
            "scheduler.node_dead_after_ms",
        ),
    ];
    for (binary, args, var, value, key) in cases {
        let mut env = base_env(&db);
        env.push((var.to_string(), value.to_string()));
        let mut p = Proc::start(binary, &bin(binary), args, &env).unwrap();
        let st = p.wait_exit(Duration::from_secs(15)).await.unwrap();
        assert_eq!(
            st.code(),
            Some(78),
            "{binary} {var}={value}:\n{}",
            p.log_tail()
        );
        assert!(
            p.log_text().contains(key),
            "{var}={value} should name {key}:\n{}",
            p.log_tail()
        );
    }
}
