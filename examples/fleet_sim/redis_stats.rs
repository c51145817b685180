//! What the simulation reads from the Redis Cluster: command counts,
//! memory, the registry's keys, who is subscribed, and the channel's
//! messages. None of it is what a sidecar does (SCAN, MEMORY USAGE).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use redis::Value;

use super::{CHANNEL, PREFIX};

/// One Redis node, for the measurements (plain connection, RESP2).
pub struct Node {
    pub url: String,
    pub conn: redis::aio::MultiplexedConnection,
}

pub async fn nodes(urls: &[String]) -> Vec<Node> {
    let mut out = Vec::new();
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("node url");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a cluster node");
        out.push(Node {
            url: url.clone(),
            conn,
        });
    }
    out
}

pub async fn info(node: &mut Node, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut node.conn)
        .await
        .unwrap_or_default()
}

pub fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// `INFO commandstats` summed over the nodes: command → calls.
pub async fn commandstats(nodes: &mut [Node]) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for n in nodes.iter_mut() {
        for line in info(n, "commandstats").await.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, stats)) = rest.split_once(':') else {
                continue;
            };
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0);
            *total.entry(name.to_owned()).or_insert(0) += calls;
        }
    }
    total
}

pub fn delta(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Commands the measurement itself sends, left out of every figure.
pub fn ours(command: &str) -> bool {
    matches!(
        command,
        "info" | "scan" | "memory|usage" | "pubsub|shardnumsub" | "pubsub|numsub" | "dbsize"
    )
}

pub async fn used_memory(nodes: &mut [Node]) -> u64 {
    let mut sum = 0;
    for n in nodes.iter_mut() {
        sum += info_field(&info(n, "memory").await, "used_memory").unwrap_or(0);
    }
    sum
}

/// What oddscache keeps in Redis, by kind.
#[derive(Default, Debug)]
pub struct Registry {
    pub sets: u64,
    pub set_bytes: u64,
    pub members: u64,
    pub distinct_members: u64,
    pub game_keys: u64,
    pub game_bytes: u64,
    pub other_keys: u64,
    pub other_bytes: u64,
}

/// Walks every oddscache key on every primary (SCAN: fine for a bench's
/// few thousand keys, never done by the sidecar) with `MEMORY USAGE`.
pub async fn registry(nodes: &mut [Node]) -> Registry {
    let mut r = Registry::default();
    let mut distinct = HashSet::new();
    for n in nodes.iter_mut() {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut n.conn)
                .await
                .expect("SCAN");
            for k in keys {
                let bytes: u64 = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&k)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut n.conn)
                    .await
                    .unwrap_or(0);
                if k.starts_with(&format!("{PREFIX}registry:")) {
                    let members: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(&k)
                        .query_async(&mut n.conn)
                        .await
                        .unwrap_or_default();
                    r.sets += 1;
                    r.set_bytes += bytes;
                    r.members += members.len() as u64;
                    distinct.extend(members);
                } else if k.starts_with(&format!("{PREFIX}game:")) {
                    r.game_keys += 1;
                    r.game_bytes += bytes;
                } else {
                    r.other_keys += 1;
                    r.other_bytes += bytes;
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    r.distinct_members = distinct.len() as u64;
    r
}

/// The node holding the sharded subscriptions, and how many.
pub async fn shard_subscribers(nodes: &mut [Node]) -> (String, u64, u64) {
    let mut best = (String::new(), 0, 0);
    for n in nodes.iter_mut() {
        let (_, sharded): (String, u64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(CHANNEL)
            .query_async(&mut n.conn)
            .await
            .unwrap_or_default();
        let (_, classic): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(CHANNEL)
            .query_async(&mut n.conn)
            .await
            .unwrap_or_default();
        best.2 += classic;
        if sharded > best.1 {
            best = (n.url.clone(), sharded, best.2);
        }
    }
    best
}

/// Payload sizes on the channel, heard through the crate's cluster
/// `ssubscribe` (a measurement, so the crate's automatic handling is fine).
pub async fn listen_sizes(
    nodes: Vec<String>,
    sharded: bool,
) -> (
    Arc<Mutex<Vec<usize>>>,
    redis::cluster_async::ClusterConnection,
) {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
    let client = redis::cluster::ClusterClientBuilder::new(nodes)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(tx)
        .build()
        .expect("cluster client");
    let mut conn = client
        .get_async_connection()
        .await
        .expect("cluster connection");
    if sharded {
        conn.ssubscribe(CHANNEL).await.expect("SSUBSCRIBE");
    } else {
        conn.subscribe(CHANNEL).await.expect("SUBSCRIBE");
    }
    let out = Arc::clone(&sizes);
    tokio::spawn(async move {
        while let Some(push) = rx.recv().await {
            if matches!(
                push.kind,
                redis::PushKind::SMessage | redis::PushKind::Message
            ) {
                if let Some(Value::BulkString(p)) = push.data.get(1) {
                    out.lock().unwrap().push(p.len());
                }
            }
        }
    });
    (sizes, conn)
}
