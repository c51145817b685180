//! The store's own tests: lookups, inserts against invalidations, the tag
//! index, URI drops and the expiry walk.

use super::*;
use crate::cache::entry::NewEntry;
use bytes::Bytes;
use http::StatusCode;

fn entry(key: &str, tags: &[&str]) -> Arc<Entry> {
    entry_at(key, tags, Instant::now())
}

/// An entry fresh for 60 s, with no grace or validators: its retention.
fn entry_at(key: &str, tags: &[&str], stored_at: Instant) -> Arc<Entry> {
    Arc::new(Entry::new(
        NewEntry {
            key: key.into(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
            initial_age: Duration::ZERO,
            fresh_for: Duration::from_secs(60),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            must_revalidate: false,
            tags: tags.iter().map(|t| Arc::from(*t)).collect(),
        },
        stored_at,
    ))
}

fn found(store: &Store, key: &str) -> bool {
    matches!(store.lookup(key, &HeaderMap::new()).0, Lookup::Found(_))
}

#[test]
fn expiry_removes_what_is_past_its_retention_and_nothing_else() {
    let store = Store::new(1 << 20);
    let t = store.begin_fetch();
    let at = Instant::now();
    assert!(store.insert(&t, "/a", &[], entry_at("/a", &["game:1"], at)));
    assert!(store.insert(&t, "/b", &[], entry_at("/b", &["game:2"], at)));
    assert_eq!(store.expire(at + Duration::from_secs(59)), 0);
    assert!(found(&store, "/a"));
    // Stored again later, "/b" is kept past the first copy's deadline.
    let later = at + Duration::from_secs(30);
    assert!(store.insert(&t, "/b", &[], entry_at("/b", &["game:2"], later)));
    assert_eq!(store.expire(at + Duration::from_secs(60)), 1);
    assert!(!found(&store, "/a"));
    assert!(found(&store, "/b"));
    store.sync();
    assert!(store.keys_for_tag("game:1").is_empty());
    assert_eq!(store.keys_for_tag("game:2").len(), 1);
    assert_eq!(store.expire(later + Duration::from_secs(60)), 1);
    store.sync();
    assert_eq!(store.entry_count(), 0);
    assert!(store.keys_for_tag("game:2").is_empty());
}

#[test]
fn tag_invalidation_removes_only_tagged_keys() {
    let store = Store::new(1 << 20);
    let t = store.begin_fetch();
    assert!(store.insert(&t, "/a", &[], entry("/a", &["game:1", "sidebar"])));
    assert!(store.insert(&t, "/b", &[], entry("/b", &["game:2"])));
    assert_eq!(store.invalidate_tags(&["game:1"]), 1);
    assert!(!found(&store, "/a"));
    assert!(found(&store, "/b"));
    // The other tag of the removed entry no longer points at it.
    store.sync();
    assert!(store.keys_for_tag("sidebar").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_invalidation_is_visible_at_once_and_removal_follows() {
    let store = Store::new(64 << 20);
    let t = store.begin_fetch();
    let n = INLINE_REMOVALS * 4;
    for i in 0..n {
        let key = format!("/g/{i}");
        assert!(store.insert(&t, &key, &[], entry(&key, &["sidebar"])));
    }
    assert_eq!(store.invalidate_tags(&["sidebar"]), n);
    // Unservable before the background removal has run.
    assert!((0..n).all(|i| !found(&store, &format!("/g/{i}"))));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        store.sync();
        if store.entry_count() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "entries were never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn a_fetch_that_predates_an_invalidation_is_not_stored() {
    let store = Store::new(1 << 20);
    let early = store.begin_fetch();
    store.invalidate_tags(&["game:1"]);
    assert!(!store.insert(&early, "/a", &[], entry("/a", &["game:1"])));
    assert!(store.insert(&early, "/b", &[], entry("/b", &["game:2"])));
    let late = store.begin_fetch();
    assert!(store.insert(&late, "/a", &[], entry("/a", &["game:1"])));
}

#[test]
fn a_fetch_forgiven_its_own_invalidation_is_stored() {
    let store = Store::new(1 << 20);
    let mut t = store.begin_fetch();
    let (_, seq) = store.invalidate_tags_seq(&["game:1"]);
    t.forgive(seq);
    assert!(store.insert(&t, "/a", &[], entry("/a", &["game:1"])));
    drop(t);
    // Nothing in flight: the epochs are pruned at the next invalidation.
    store.invalidate_tags(&["game:2"]);
    assert!(store.shared.ledger.lock().inflight_is_empty());
}

#[test]
fn a_fetch_is_forgiven_only_its_own_invalidation() {
    // The fetch awaits Redis while a peer invalidates the game, then
    // invalidates it itself: its body may predate the peer's change.
    let store = Store::new(1 << 20);
    let mut t = store.begin_fetch();
    store.invalidate_tags(&["game:1"]);
    let (_, own) = store.invalidate_tags_seq(&["game:1"]);
    t.forgive(own);
    assert!(!store.insert(&t, "/a", &[], entry("/a", &["game:1"])));
    // The same order the other way round: forgiving its own does not
    // forgive the peer's that came after.
    let mut t = store.begin_fetch();
    let (_, own) = store.invalidate_tags_seq(&["game:2"]);
    store.invalidate_tags(&["game:2"]);
    t.forgive(own);
    assert!(!store.insert(&t, "/b", &[], entry("/b", &["game:2"])));
}

/// One step of [`interleavings_keep_the_freshness_rule`].
#[derive(Clone, Debug)]
enum Op {
    Begin(usize),
    End(usize),
    /// A peer's (or an API's) invalidation of game `t`.
    Invalidate(usize),
    /// Fetch `i`'s own invalidation of game `t`, which it forgives.
    Own(usize, usize),
    Flush,
    /// Fetch `i` stores key `k`, tagged with game `t`.
    Insert(usize, usize, usize),
    Lookup(usize),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (0..3usize).prop_map(Op::Begin),
        (0..3usize).prop_map(Op::End),
        (0..2usize).prop_map(Op::Invalidate),
        (0..3usize, 0..2usize).prop_map(|(i, t)| Op::Own(i, t)),
        Just(Op::Flush),
        (0..3usize, 0..3usize, 0..2usize).prop_map(|(i, k, t)| Op::Insert(i, k, t)),
        (0..3usize).prop_map(Op::Lookup),
    ]
}

proptest::proptest! {
    /// Every interleaving of fetches, invalidations (a peer's or the
    /// fetch's own), flushes, stores and lookups against a model of the
    /// rule in `freshness`: a store succeeds exactly when no
    /// invalidation of its tag, other than its fetch's own, and no
    /// flush came after its fetch began; a lookup finds exactly the
    /// entries stored since the last invalidation of their tag.
    #[test]
    fn interleavings_keep_the_freshness_rule(ops in proptest::collection::vec(op(), 1..60)) {
        let store = Store::new(1 << 20);
        let mut tickets: Vec<Option<FetchTicket>> = vec![None, None, None];
        // The model: the step each fetch began at and what it forgives;
        // each invalidation's step and game (None: a flush); each key's
        // entry: its game and whether it is alive.
        let mut began: Vec<usize> = vec![0; 3];
        let mut forgiven: Vec<Vec<usize>> = vec![Vec::new(); 3];
        let mut invalidations: Vec<(usize, Option<usize>)> = Vec::new();
        let mut keys: Vec<Option<(usize, bool)>> = vec![None; 3];
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Begin(i) => {
                    if tickets[i].is_none() {
                        tickets[i] = Some(store.begin_fetch());
                        began[i] = step;
                        forgiven[i].clear();
                    }
                }
                Op::End(i) => tickets[i] = None,
                Op::Invalidate(t) => {
                    store.invalidate_tags(&[format!("game:{t}")]);
                    invalidations.push((step, Some(t)));
                    for k in keys.iter_mut().flatten() {
                        if k.0 == t {
                            k.1 = false;
                        }
                    }
                }
                Op::Own(i, t) => {
                    let Some(ticket) = tickets[i].as_mut() else { continue };
                    let (_, seq) = store.invalidate_tags_seq(&[format!("game:{t}")]);
                    ticket.forgive(seq);
                    forgiven[i].push(step);
                    invalidations.push((step, Some(t)));
                    for k in keys.iter_mut().flatten() {
                        if k.0 == t {
                            k.1 = false;
                        }
                    }
                }
                Op::Flush => {
                    store.flush();
                    invalidations.push((step, None));
                    for k in keys.iter_mut().flatten() {
                        k.1 = false;
                    }
                }
                Op::Insert(i, k, t) => {
                    let Some(ticket) = tickets[i].as_ref() else { continue };
                    let key = format!("/k{k}");
                    let stored = store.insert(ticket, &key, &[], entry(&key, &[&format!("game:{t}")]));
                    let superseded = invalidations.iter().any(|&(at, game)| {
                        at > began[i]
                            && (game.is_none() || game == Some(t))
                            && !(game.is_some() && forgiven[i].contains(&at))
                    });
                    proptest::prop_assert_eq!(stored, !superseded, "insert at step {}", step);
                    if stored {
                        keys[k] = Some((t, true));
                    }
                }
                Op::Lookup(k) => {
                    let alive = keys[k].is_some_and(|(_, alive)| alive);
                    proptest::prop_assert_eq!(found(&store, &format!("/k{k}")), alive, "lookup at step {}", step);
                }
            }
        }
    }
}

#[test]
fn replacing_entries_in_a_full_store_never_deadlocks() {
    // A full store evicts; moka may run its maintenance (and so the
    // eviction listener, which takes the tag index's lock) inside any
    // call. Replacing entries under the locks of `insert` once did.
    let (done, finished) = std::sync::mpsc::channel();
    let store = Arc::new(Store::new(16 << 10));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (store, done) = (Arc::clone(&store), done.clone());
            std::thread::spawn(move || {
                let t = store.begin_fetch();
                for i in 0..20_000 {
                    let key = format!("/k{}", (i * 7 + w) % 64);
                    store.insert(&t, &key, &[], entry(&key, &["sidebar", "game:1"]));
                    found(&store, &key);
                }
                let _ = done.send(());
            })
        })
        .collect();
    for _ in &workers {
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("an insert deadlocked against the eviction listener");
    }
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn invalidated_entries_are_not_current_for_the_l2_writer() {
    let store = Store::new(1 << 20);
    let t = store.begin_fetch();
    let a = entry("/a", &["game:1"]);
    assert!(store.insert(&t, "/a", &[], Arc::clone(&a)));
    assert!(store.is_current(&a));
    // Killed, and still in moka until the removal runs.
    a.kill();
    assert!(!store.is_current(&a));
}

#[test]
fn insert_and_invalidate_race_never_leaves_a_superseded_entry_alive() {
    // Real threads: one stores entries fetched before an invalidation
    // that another thread makes at the same time. Whichever wins, no
    // entry of the invalidated tag that predates it may be found.
    for round in 0..200 {
        let store = Arc::new(Store::new(1 << 20));
        let tickets: Vec<FetchTicket> = (0..8).map(|_| store.begin_fetch()).collect();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (s, b) = (Arc::clone(&store), Arc::clone(&barrier));
        let inserter = std::thread::spawn(move || {
            b.wait();
            for (i, t) in tickets.iter().enumerate() {
                let key = format!("/r{round}/{i}");
                s.insert(t, &key, &[], entry(&key, &["game:1"]));
            }
        });
        barrier.wait();
        store.invalidate_tags(&["game:1"]);
        inserter.join().unwrap();
        for i in 0..8 {
            assert!(
                !found(&store, &format!("/r{round}/{i}")),
                "round {round}: entry {i} survived an invalidation newer than its fetch"
            );
        }
    }
}

#[test]
fn while_cut_off_old_entries_revalidate() {
    let store = Store::new(1 << 20);
    store.ledger().set_outage_bound(Duration::from_secs(5));
    let old = entry_at("/a", &["game:1"], Instant::now() - Duration::from_secs(10));
    let plain = entry_at("/p", &[], Instant::now() - Duration::from_secs(10));
    let now = Instant::now();
    assert_eq!(store.freshness(&old, now), crate::cache::Standing::Fresh);
    store.ledger().join_fleet();
    assert_eq!(store.freshness(&old, now), crate::cache::Standing::Stale);
    assert!(!store.ledger().usable_on_error(&old, now));
    store.ledger().caught_up(now);
    assert_eq!(store.freshness(&old, now), crate::cache::Standing::Fresh);
    // Silent for longer than a heartbeat: cut off again.
    let later = now + crate::cache::freshness::LOG_SILENCE + Duration::from_millis(10);
    assert!(store.ledger().is_cut_off(later));
    store.ledger().join_fleet();
    // Untagged entries too: a peer's unsafe method reaches them through the
    // log, which this replica is not reading.
    assert_eq!(store.freshness(&plain, now), crate::cache::Standing::Stale);
    assert!(!store.ledger().usable_on_error(&plain, now));
    let young = entry("/y", &["game:1"]);
    assert_eq!(store.freshness(&young, now), crate::cache::Standing::Fresh);
}

#[test]
fn flush_drops_every_entry_and_blocks_older_fetches() {
    let store = Store::new(1 << 20);
    let t = store.begin_fetch();
    store.insert(&t, "/a", &[], entry("/a", &["game:1"]));
    store.insert(&t, "/plain", &[], entry("/plain", &[]));
    store.insert(&t, "/local", &[], entry("/local", &[&uri_tag("/local")]));
    // Untagged and URI-only entries go too: a missed log entry may have
    // been an unsafe method's URI (a flush follows a gap in the log).
    assert_eq!(store.flush(), 3);
    for key in ["/a", "/plain", "/local"] {
        assert!(!found(&store, key), "{key} survived the flush");
    }
    assert!(store.keys_for_tag(&uri_tag("/local")).is_empty());
    assert!(!store.insert(&t, "/a", &[], entry("/a", &["game:1"])));
    assert!(!store.insert(&t, "/plain", &[], entry("/plain", &[])));
    let after = store.begin_fetch();
    assert!(store.insert(&after, "/plain", &[], entry("/plain", &[])));
}

#[test]
fn an_unsafe_method_drops_the_uri_its_variants_and_its_fetches() {
    let store = Store::new(1 << 20);
    let t = store.begin_fetch();
    let lang = [HeaderName::from_static("accept-language")];
    assert!(store.insert(&t, "/a", &[], entry("/a", &["game:1"])));
    assert!(store.insert(&t, "/v", &lang, entry("/v|fr", &[&uri_tag("/v")])));
    assert!(store.insert(&t, "/v", &lang, entry("/v|de", &[&uri_tag("/v")])));
    assert!(store.insert(&t, "/b", &[], entry("/b", &["game:1"])));
    // A plain entry is not indexed under its URI: its key finds it.
    assert!(store.keys_for_tag(&uri_tag("/a")).is_empty());

    let in_flight = store.begin_fetch();
    let dropped = store.invalidate_uri("/a");
    assert_eq!((dropped.removed, dropped.keys), (1, vec![Arc::from("/a")]));
    assert!(!found(&store, "/a"));
    assert!(found(&store, "/b"));
    assert_eq!(store.keys_for_tag("game:1"), [Arc::from("/b")]);
    assert!(
        !store.insert(&in_flight, "/a", &[], entry("/a", &["game:1"])),
        "a response fetched before the unsafe method was stored"
    );
    assert!(store.insert(&in_flight, "/b", &[], entry("/b", &["game:1"])));

    let dropped = store.invalidate_uri("/v");
    assert_eq!(dropped.removed, 2, "both variants");
    let mut keys = dropped.keys;
    keys.sort();
    assert_eq!(
        keys,
        [Arc::from("/v"), Arc::from("/v|de"), Arc::from("/v|fr")]
    );
    assert!(!found(&store, "/v|fr") && !found(&store, "/v|de"));
    // A URI with nothing cached still names itself, for the L2.
    assert_eq!(store.invalidate_uri("/none").keys, [Arc::from("/none")]);
}

#[test]
fn replacing_an_entry_keeps_it_indexed() {
    let store = Store::new(1 << 20);
    let t = store.begin_fetch();
    store.insert(&t, "/a", &[], entry("/a", &["game:1"]));
    store.insert(&t, "/a", &[], entry("/a", &["game:1"]));
    store.sync();
    assert_eq!(store.invalidate_tags(&["game:1"]), 1);
    assert!(!found(&store, "/a"));
}

#[test]
fn vary_slots_lead_to_variants() {
    let store = Store::new(1 << 20);
    let t = store.begin_fetch();
    let names = [HeaderName::from_static("accept-language")];
    let mut en = HeaderMap::new();
    en.insert("accept-language", "en".parse().unwrap());
    let vkey = key::variant("/v", &names, &en);
    store.insert(&t, "/v", &names, entry(&vkey, &[]));
    assert!(matches!(store.lookup("/v", &en).0, Lookup::Found(_)));
    let mut de = HeaderMap::new();
    de.insert("accept-language", "de".parse().unwrap());
    let (miss, k) = store.lookup("/v", &de);
    assert!(matches!(miss, Lookup::Miss));
    assert_ne!(k.as_str(), vkey);
}

#[test]
fn shared_reads_predate_invalidations_still_deleting_in_redis() {
    let store = Store::new(1 << 20);
    let hold = store.begin_hold();
    store.invalidate_tags(&["game:1"]);
    // Read from Redis while the invalidation is still deleting there:
    // the copy may be the old one.
    let read = store.begin_shared_fetch();
    assert!(!store.insert(&read, "/a", &[], entry("/a", &["game:1"])));
    assert!(store.insert(&read, "/b", &[], entry("/b", &["game:2"])));
    drop(hold);
    let read = store.begin_shared_fetch();
    let a = entry("/a", &["game:1"]);
    assert!(store.insert(&read, "/a", &[], Arc::clone(&a)));
    assert!(store.is_current(&a));
    // Another entry under the same key is not the stored one.
    assert!(!store.is_current(&entry("/a", &["game:1"])));
}

#[tokio::test]
async fn one_leader_per_key_and_waiters_hear_the_outcome() {
    let store = Store::new(1 << 20);
    let Fill::Lead(guard) = store.fill("/k") else {
        panic!("first is leader")
    };
    let Fill::Wait(rx) = store.fill("/k") else {
        panic!("second waits")
    };
    let e = entry("/k", &[]);
    guard.finish(FillState::Filled(Arc::clone(&e)));
    match wait_fill(rx, Duration::from_secs(5)).await {
        Some(FillState::Filled(got)) => assert!(Arc::ptr_eq(&got, &e)),
        other => panic!("unexpected {other:?}"),
    }
    // A dropped leader releases waiters as abandoned.
    let Fill::Lead(guard) = store.fill("/k") else {
        panic!("lock was released")
    };
    let Fill::Wait(rx) = store.fill("/k") else {
        panic!()
    };
    drop(guard);
    assert!(matches!(
        wait_fill(rx, Duration::from_secs(5)).await,
        Some(FillState::Abandoned)
    ));
}

#[test]
fn shared_tags_file_each_entry_until_it_goes() {
    let store = Store::new(1 << 20);
    let t = store.begin_fetch();
    store.insert(&t, "/a", &[], entry("/a", &["game:1", "sidebar"]));
    store.insert(&t, "/b", &[], entry("/b", &["sidebar", "game:2"]));
    store.insert(&t, "/c", &[], entry("/c", &["sidebar"]));
    let mut keys = store.keys_for_tag("sidebar");
    keys.sort();
    assert_eq!(keys, [Arc::from("/a"), Arc::from("/b"), Arc::from("/c")]);
    // Replaced, /b stays filed once; dropped, /c is no longer filed.
    store.insert(&t, "/b", &[], entry("/b", &["sidebar", "game:2"]));
    assert!(store.invalidate_key("/c"));
    store.sync();
    let mut keys = store.keys_for_tag("sidebar");
    keys.sort();
    assert_eq!(keys, [Arc::from("/a"), Arc::from("/b")]);
    assert!(store.invalidate_key("/a"));
    store.sync();
    // Back to one entry: the tag is still found, under its text.
    assert_eq!(store.keys_for_tag("sidebar"), [Arc::from("/b")]);
    assert_eq!(store.keys_for_tag("game:1"), Vec::<Arc<str>>::new());
    assert_eq!(store.invalidate_tags(&["sidebar"]), 1);
    assert!(!found(&store, "/b"));
    store.sync();
    assert!(store.shared.lock_tags().is_empty());
}
