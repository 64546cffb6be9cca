//! One conformance suite for every `MessageStore` backend — SQLite, and DynamoDB against a real
//! dynalite server (`tests/js/node_modules`, installed by `scripts/test.sh`) — plus the failure
//! paths: DynamoDB down, hung, throttling; the SQLite writer failing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{free_port, reply, Azurite, Dynalite, Script, StandIn, AZURITE_KEY};
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use futures_util::future::BoxFuture;
use hubhook::store::azuretable::{self, Account, AzureTableOptions, AzureTableStore};
use hubhook::store::dynamodb::{connect_with, DynamoOptions, DynamoStore};
use hubhook::store::sqlite::SqliteStore;
use hubhook::store::{
    encode_cursor, Appended, Broadcast, BroadcastKind, MessageStore, NewMessage, Online,
    StoreError, StoredMessage, MAX_PAGE,
};

const T0: i64 = 1_700_000_000_000;

fn msg(room: &str, conn: &str, ce: &str, at_ms: i64, text: &str) -> NewMessage {
    NewMessage {
        room: room.into(),
        connection_id: conn.into(),
        ce_id: ce.into(),
        user_id: Some(format!("user-{conn}")),
        text: text.into(),
        at_ms,
    }
}

/// The broadcast the chat rules would record with `m`.
fn broadcast_for(m: &NewMessage) -> Broadcast {
    Broadcast {
        id: m.id(),
        kind: BroadcastKind::Message,
        room: m.room.clone(),
        payload: format!(
            r#"{{"type":"message","id":"{}","text":"{}"}}"#,
            m.id(),
            m.text
        ),
        connection_id: m.connection_id.clone(),
        ce_id: m.ce_id.clone(),
        created_ms: T0,
        due_ms: T0 + 15_000,
        attempts: 0,
    }
}

fn notice(conn: &str, ce: &str) -> Broadcast {
    let id = Broadcast::notice_id(conn, ce, T0);
    Broadcast {
        payload: format!(r#"{{"type":"joined","id":"{id}"}}"#),
        id,
        kind: BroadcastKind::Notice,
        room: "notices".into(),
        connection_id: conn.into(),
        ce_id: ce.into(),
        created_ms: T0,
        due_ms: T0 + 15_000,
        attempts: 0,
    }
}

async fn append(store: &dyn MessageStore, m: NewMessage) -> Result<Appended, StoreError> {
    let b = broadcast_for(&m);
    store.append(m, b).await
}

async fn due(store: &dyn MessageStore, now_ms: i64) -> Vec<Broadcast> {
    store.due_broadcasts(now_ms, 1000).await.expect("due")
}

async fn all(store: &dyn MessageStore, room: &str) -> Vec<StoredMessage> {
    let page = store.history(room, MAX_PAGE, None).await.expect("history");
    assert_eq!(page.next, None, "{room}: more than one page");
    page.messages
}

// ---------------------------------------------------------------------------------------------
// The conformance suite

fn online(room: &str, conn: &str, user: &str, since_ms: i64, expires_ms: i64) -> Online {
    Online {
        room: room.into(),
        connection_id: conn.into(),
        user_id: user.into(),
        since_ms,
        expires_ms,
    }
}

/// Who is in `room` at `now`: `(user, connections, since_ms)`.
async fn present(store: &dyn MessageStore, room: &str, now: i64) -> Vec<(String, u32, i64)> {
    store
        .presence(room, now)
        .await
        .expect("presence")
        .into_iter()
        .map(|u| (u.user_id, u.connections, u.since_ms))
        .collect()
}

/// Presence: per connection, grouped by user, idempotent join (first `since` kept) and leave,
/// rooms isolated, expired entries (a lost `disconnected`) ignored.
async fn presence(store: &dyn MessageStore) {
    let hour = 3_600_000;
    assert_eq!(present(store, "p-room", T0).await, vec![]);
    store
        .presence_online(&online("p-room", "c1", "alice", T0, T0 + hour))
        .await
        .unwrap();
    store
        .presence_online(&online("p-room", "c2", "alice", T0 + 5, T0 + hour))
        .await
        .unwrap();
    store
        .presence_online(&online("p-room", "c3", "bob", T0 + 7, T0 + hour))
        .await
        .unwrap();
    store
        .presence_online(&online("p-other", "c4", "carol", T0, T0 + hour))
        .await
        .unwrap();
    // A retried `connected`: same entry, the first `since` kept, the expiry moved.
    store
        .presence_online(&online("p-room", "c3", "bob", T0 + 9, T0 + 2 * hour))
        .await
        .unwrap();
    assert_eq!(
        present(store, "p-room", T0 + 10).await,
        vec![("alice".into(), 2, T0), ("bob".into(), 1, T0 + 7)]
    );
    assert_eq!(
        present(store, "p-other", T0 + 10).await,
        vec![("carol".into(), 1, T0)]
    );
    store.presence_offline("p-room", "c1").await.unwrap();
    store
        .presence_offline("p-room", "c1")
        .await
        .expect("leaving twice is not an error");
    store.presence_offline("p-room", "never").await.unwrap();
    assert_eq!(
        present(store, "p-room", T0 + 10).await,
        vec![("alice".into(), 1, T0 + 5), ("bob".into(), 1, T0 + 7)]
    );
    // After an hour only bob's renewed entry counts; after two, nobody (no ghost forever).
    assert_eq!(
        present(store, "p-room", T0 + hour + 1).await,
        vec![("bob".into(), 1, T0 + 7)]
    );
    assert_eq!(present(store, "p-room", T0 + 2 * hour + 1).await, vec![]);
}

async fn suite(store: Arc<dyn MessageStore>) {
    let t = Instant::now();
    store.health().await.expect("health");
    append_then_history(&*store).await;
    retry_is_idempotent(&*store).await;
    distinct_deliveries_are_distinct_rows(&*store).await;
    newest_first_and_paging(&*store).await;
    rooms_are_isolated(&*store).await;
    bad_cursors(&*store).await;
    notices(&*store).await;
    a_notice_and_a_message_share_a_ce_id(&*store).await;
    outbox(&*store).await;
    retry_with_a_new_time(&*store).await;
    concurrent_appends(store.clone()).await;
    presence(&*store).await;
    store.health().await.expect("health after the suite");
    eprintln!("suite on {}: {:?}", store.describe(), t.elapsed());
}

async fn append_then_history(store: &dyn MessageStore) {
    let m = msg(
        "basic",
        "conn-a",
        "ce-1",
        T0 + 123,
        "héllo \"wörld\" 🎉\nline 2",
    );
    let a = append(store, m.clone()).await.expect("append");
    assert!(a.inserted);
    assert_eq!(a.message, StoredMessage::from_new(&m));
    assert_eq!(a.message.id, m.id());
    assert_eq!(a.message.from.as_deref(), Some("user-conn-a"));
    assert_eq!(a.message.at, "2023-11-14T22:13:20.123Z");

    let anon = NewMessage {
        user_id: None,
        ..msg("basic", "conn-b", "ce-1", T0 + 500, "anonymous")
    };
    let b = append(store, anon.clone()).await.expect("append anonymous");
    assert!(b.inserted);
    assert_eq!(b.message.from, None);

    let page = store.history("basic", 10, None).await.expect("history");
    assert_eq!(page.messages, vec![b.message, a.message]);
    assert_eq!(page.next, None);
}

async fn retry_is_idempotent(store: &dyn MessageStore) {
    let m = msg("retry", "conn-r", "ce-1", T0, "first");
    let first = append(store, m.clone()).await.expect("append");
    assert!(first.inserted);
    // A retry is the same event; even if something differed, the first write wins.
    for retry in [
        m.clone(),
        NewMessage {
            text: "changed".into(),
            ..m.clone()
        },
    ] {
        let again = append(store, retry).await.expect("retry");
        assert!(!again.inserted);
        assert_eq!(again.message, first.message);
    }
    assert_eq!(all(store, "retry").await, vec![first.message]);
}

async fn distinct_deliveries_are_distinct_rows(store: &dyn MessageStore) {
    // Same connection and time, different ce-ids; and the same ce-id on another connection.
    let ms = [
        msg("same-time", "conn-s1", "ce-1", T0, "one"),
        msg("same-time", "conn-s1", "ce-2", T0, "two"),
        msg("same-time", "conn-s2", "ce-1", T0, "three"),
    ];
    let mut ids = BTreeSet::new();
    for m in &ms {
        let a = append(store, m.clone()).await.expect("append");
        assert!(a.inserted, "{m:?}");
        ids.insert(a.message.id);
    }
    assert_eq!(ids.len(), 3);
    let stored: BTreeSet<_> = all(store, "same-time")
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(stored, ids);
}

async fn newest_first_and_paging(store: &dyn MessageStore) {
    let room = "paging";
    let n = 25;
    // Inserted out of order: history is ordered by event time, not by insertion.
    for k in 0..n {
        let i = (k * 7) % n;
        let a = append(
            store,
            msg(
                room,
                "conn-p",
                &format!("ce-{i}"),
                T0 + i * 1000,
                &format!("m{i}"),
            ),
        )
        .await
        .unwrap();
        assert!(a.inserted);
    }
    let expected: Vec<String> = (0..n).rev().map(|i| format!("m{i}")).collect();
    let everything: Vec<String> = all(store, room).await.into_iter().map(|m| m.text).collect();
    assert_eq!(everything, expected, "newest first");

    for (limit, sizes) in [
        (7, vec![7, 7, 7, 4]),
        (5, vec![5; 5]),
        (25, vec![25]),
        (1000, vec![25]),
    ] {
        let mut seen = Vec::new();
        let mut got_sizes = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let page = store
                .history(room, limit, before.as_deref())
                .await
                .expect("page");
            got_sizes.push(page.messages.len());
            seen.extend(page.messages.into_iter().map(|m| m.text));
            match page.next {
                Some(c) => before = Some(c),
                None => break,
            }
            assert!(got_sizes.len() <= 30, "paging does not end");
        }
        assert_eq!(got_sizes, sizes, "limit {limit}");
        assert_eq!(seen, expected, "limit {limit}: gaps or duplicates");
    }

    // limit 0 is clamped to 1.
    let one = store.history(room, 0, None).await.unwrap();
    assert_eq!(one.messages.len(), 1);
    assert_eq!(one.messages[0].text, "m24");
    assert!(one.next.is_some());
    // An empty room.
    let empty = store.history("nobody-here", 10, None).await.unwrap();
    assert!(empty.messages.is_empty());
    assert_eq!(empty.next, None);
}

async fn rooms_are_isolated(store: &dyn MessageStore) {
    let a = append(store, msg("iso-a", "conn-i", "ce-1", T0, "in a"))
        .await
        .unwrap();
    let b = append(store, msg("iso-b", "conn-i", "ce-2", T0, "in b"))
        .await
        .unwrap();
    assert_eq!(all(store, "iso-a").await, vec![a.message]);
    assert_eq!(all(store, "iso-b").await, vec![b.message]);
    // A room whose name is a prefix of another's.
    assert!(all(store, "iso").await.is_empty());
}

async fn bad_cursors(store: &dyn MessageStore) {
    for bad in [
        "!!",
        "",
        "aGVsbG8",
        &encode_cursor("1700000000000-zzzzzzzzzzzzzzzz"),
    ] {
        assert_eq!(
            store.history("paging", 10, Some(bad)).await,
            Err(StoreError::BadCursor),
            "{bad:?}"
        );
    }
}

/// Notices: a delivery recorded once, with its broadcast, which stays until it is sent.
async fn notices(store: &dyn MessageStore) {
    let n = notice("conn-c", "ce-1");
    let first = store.record_notice(n.clone()).await.unwrap();
    assert!(first.inserted);
    assert_eq!(first.pending.as_ref(), Some(&n));
    // The retry of an unsent notice gets it back, as first recorded (a new time changes nothing).
    let retry = store
        .record_notice(Broadcast {
            created_ms: T0 + 5_000,
            payload: "{}".into(),
            ..n.clone()
        })
        .await
        .unwrap();
    assert!(!retry.inserted);
    assert_eq!(retry.pending.as_ref(), Some(&n));
    store.broadcast_sent(&n).await.unwrap();
    let after = store.record_notice(n.clone()).await.unwrap();
    assert_eq!((after.inserted, after.pending), (false, None));
    // Deliveries are per connection and ce-id.
    for other in [notice("conn-c", "ce-2"), notice("conn-d", "ce-1")] {
        let r = store.record_notice(other.clone()).await.unwrap();
        assert!(r.inserted);
        store.broadcast_sent(&other).await.unwrap();
    }
    // Notices and messages do not share keys.
    let a = append(store, msg("claims", "conn-c", "ce-1", T0, "after a notice"))
        .await
        .unwrap();
    assert!(a.inserted);
    assert_eq!(all(store, "claims").await.len(), 1);
}

/// A notice and a message of one connection with the same `ce-id` (and the same event time, so
/// even their ids are equal) are two deliveries: both stored, both broadcasts pending at once,
/// each handed back to its own retry, counted, sent and gone on its own.
async fn a_notice_and_a_message_share_a_ce_id(store: &dyn MessageStore) {
    let n = Broadcast {
        room: "shared".into(),
        ..notice("conn-s", "ce-1")
    };
    let m = msg("shared", "conn-s", "ce-1", T0, "same ce-id as the notice");
    let bm = broadcast_for(&m);
    assert_eq!(n.id, bm.id, "the strictest case: one id for both");

    let recorded = store.record_notice(n.clone()).await.expect("the notice");
    assert!(recorded.inserted);
    assert_eq!(recorded.pending.as_ref(), Some(&n));
    let appended = store
        .append(m.clone(), bm.clone())
        .await
        .expect("the message, after a notice with its ce-id");
    assert!(appended.inserted);
    assert_eq!(appended.pending.as_ref(), Some(&bm));
    assert_eq!(
        all(store, "shared").await,
        vec![StoredMessage::from_new(&m)]
    );

    // Each retry gets its own broadcast back, not the other one.
    let again = store.record_notice(n.clone()).await.unwrap();
    assert_eq!((again.inserted, again.pending.as_ref()), (false, Some(&n)));
    let again = store.append(m.clone(), bm.clone()).await.unwrap();
    assert_eq!((again.inserted, again.pending.as_ref()), (false, Some(&bm)));

    let of_conn = |list: Vec<Broadcast>| -> Vec<(BroadcastKind, String, u32)> {
        let mut v: Vec<_> = list
            .into_iter()
            .filter(|b| b.connection_id == "conn-s")
            .map(|b| (b.kind, b.payload, b.attempts))
            .collect();
        v.sort_by_key(|(kind, _, _)| *kind == BroadcastKind::Notice);
        v
    };
    assert_eq!(
        of_conn(due(store, i64::MAX).await),
        [
            (BroadcastKind::Message, bm.payload.clone(), 0),
            (BroadcastKind::Notice, n.payload.clone(), 0)
        ]
    );

    // A failure of one is counted on that one only.
    store.broadcast_failed(&n, T0).await.unwrap();
    assert_eq!(
        of_conn(due(store, i64::MAX).await),
        [
            (BroadcastKind::Message, bm.payload.clone(), 0),
            (BroadcastKind::Notice, n.payload.clone(), 1)
        ]
    );

    // Sending the notice leaves the message's broadcast pending, and the other way round.
    store.broadcast_sent(&n).await.unwrap();
    assert_eq!(
        of_conn(due(store, i64::MAX).await),
        [(BroadcastKind::Message, bm.payload.clone(), 0)]
    );
    let again = store.record_notice(n.clone()).await.unwrap();
    assert_eq!((again.inserted, again.pending), (false, None));
    let again = store.append(m.clone(), bm.clone()).await.unwrap();
    assert_eq!((again.inserted, again.pending.as_ref()), (false, Some(&bm)));
    store.broadcast_sent(&bm).await.unwrap();
    assert_eq!(of_conn(due(store, i64::MAX).await), []);
    let again = store.append(m.clone(), bm.clone()).await.unwrap();
    assert_eq!((again.inserted, again.pending), (false, None));
    assert_eq!(all(store, "shared").await.len(), 1);
}

/// The transactional outbox: a message and its broadcast committed together, the broadcast kept
/// until sent, handed back to a retry while unsent, and due for the sweeper on its schedule.
async fn outbox(store: &dyn MessageStore) {
    let m = msg("outbox", "conn-o", "ce-1", T0, "hello");
    let a = append(store, m.clone()).await.unwrap();
    assert!(a.inserted);
    let b = a.pending.clone().expect("the broadcast is pending");
    assert_eq!(
        (b.id.as_str(), b.kind),
        (m.id().as_str(), BroadcastKind::Message)
    );
    let listed = |list: Vec<Broadcast>, id: &str| list.into_iter().find(|x| x.id == id);
    assert_eq!(
        listed(due(store, b.due_ms - 1).await, &b.id),
        None,
        "not due yet"
    );
    assert_eq!(listed(due(store, b.due_ms).await, &b.id).as_ref(), Some(&b));
    let backlog = store.backlog().await.unwrap();
    assert!(
        backlog.pending >= 1 && backlog.oldest_ms <= Some(b.created_ms),
        "{backlog:?}"
    );

    // A retry of the stored but unsent delivery gets the broadcast back.
    let again = append(store, m.clone()).await.unwrap();
    assert!(!again.inserted);
    assert_eq!(again.pending.as_ref(), Some(&b));

    // A failed send is counted and pushes the next attempt back.
    store.broadcast_failed(&b, b.due_ms + 5_000).await.unwrap();
    assert_eq!(listed(due(store, b.due_ms + 4_999).await, &b.id), None);
    let retried = listed(due(store, b.due_ms + 5_000).await, &b.id).expect("due again");
    assert_eq!(retried.attempts, 1);

    // Sent: out of the outbox; a retry now is a plain duplicate.
    store.broadcast_sent(&b).await.unwrap();
    assert_eq!(listed(due(store, i64::MAX).await, &b.id), None);
    let after = append(store, m.clone()).await.unwrap();
    assert_eq!((after.inserted, after.pending), (false, None));

    // Oldest due first.
    let older = msg("outbox", "conn-o", "ce-2", T0, "older");
    let newer = msg("outbox", "conn-o", "ce-3", T0, "newer");
    let mut bo = broadcast_for(&older);
    bo.due_ms = T0 + 1;
    let mut bn = broadcast_for(&newer);
    bn.due_ms = T0 + 2;
    store.append(newer.clone(), bn.clone()).await.unwrap();
    store.append(older.clone(), bo.clone()).await.unwrap();
    let order: Vec<String> = due(store, T0 + 2)
        .await
        .into_iter()
        .map(|x| x.id)
        .filter(|id| *id == bo.id || *id == bn.id)
        .collect();
    assert_eq!(order, [bo.id.clone(), bn.id.clone()]);
    for x in [&bo, &bn] {
        store.broadcast_sent(x).await.unwrap();
    }
}

/// Deduplication keys on connection id + ce-id only: a retry whose `ce-time` changed is the same
/// delivery, maps to the message first stored, and does not store or broadcast twice.
async fn retry_with_a_new_time(store: &dyn MessageStore) {
    let m = msg("retimed", "conn-t", "ce-1", T0, "once");
    let first = append(store, m.clone()).await.unwrap();
    assert!(first.inserted);
    for at_ms in [T0 + 1, T0 + 60_000, T0 - 60_000] {
        let retry = NewMessage { at_ms, ..m.clone() };
        let again = append(store, retry).await.unwrap();
        assert!(!again.inserted, "retry at {at_ms}");
        assert_eq!(again.message, first.message);
        assert_eq!(
            again.pending.as_ref().map(|b| b.id.as_str()),
            Some(m.id().as_str())
        );
    }
    assert_eq!(all(store, "retimed").await, vec![first.message]);
    store.broadcast_sent(&first.pending.unwrap()).await.unwrap();
}

async fn concurrent_appends(store: Arc<dyn MessageStore>) {
    let room = "concurrent";
    let deliveries: Vec<NewMessage> = (0..64)
        .map(|i| {
            msg(
                room,
                &format!("conn-cc{}", i % 5),
                &format!("ce-{i}"),
                T0 + i / 3,
                "x",
            )
        })
        .collect();
    // Every delivery twice at once: 128 racing appends.
    let mut tasks = tokio::task::JoinSet::new();
    for m in deliveries.iter().chain(deliveries.iter()).cloned() {
        let store = store.clone();
        tasks.spawn(async move { (m.id(), append(&*store, m).await) });
    }
    let mut results: HashMap<String, Vec<(bool, StoredMessage)>> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, r) = joined.expect("task");
        let a = r.unwrap_or_else(|e| panic!("append {id}: {e}"));
        results.entry(id).or_default().push((a.inserted, a.message));
    }
    assert_eq!(results.len(), 64);
    for (id, rs) in &results {
        assert_eq!(rs.len(), 2);
        assert_eq!(
            rs.iter().filter(|(inserted, _)| *inserted).count(),
            1,
            "{id}: inserted exactly once"
        );
        assert_eq!(rs[0].1, rs[1].1);
        assert_eq!(&rs[0].1.id, id);
    }
    let stored = all(&*store, room).await;
    assert_eq!(stored.len(), 64);
    let ids: BTreeSet<_> = stored.into_iter().map(|m| m.id).collect();
    assert_eq!(ids, results.keys().cloned().collect());
}

// ---------------------------------------------------------------------------------------------
// SQLite

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backend() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("x.db")).expect("open");
    assert!(store.describe().starts_with("sqlite://"));
    suite(Arc::new(store)).await;
}

/// The layout of a database written before the outbox told notices and messages apart: keyed by
/// `id` alone, one unique index on connection id + `ce-id`.
const OLD_SQLITE_SCHEMA: &str = "
CREATE TABLE messages (
    room TEXT NOT NULL, id TEXT NOT NULL, connection_id TEXT NOT NULL, ce_id TEXT NOT NULL,
    user_id TEXT, text TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (room, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_delivery ON messages (connection_id, ce_id);
CREATE INDEX messages_at ON messages (at_ms);
CREATE TABLE deliveries (
    connection_id TEXT NOT NULL, ce_id TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (connection_id, ce_id)
) WITHOUT ROWID;
CREATE TABLE outbox (
    id TEXT NOT NULL PRIMARY KEY, kind TEXT NOT NULL, room TEXT NOT NULL, payload TEXT NOT NULL,
    connection_id TEXT NOT NULL, ce_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
    due_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE UNIQUE INDEX outbox_delivery ON outbox (connection_id, ce_id);
CREATE INDEX outbox_due ON outbox (due_ms);
CREATE TABLE presence (
    room TEXT NOT NULL, connection_id TEXT NOT NULL, user_id TEXT NOT NULL,
    since_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, PRIMARY KEY (room, connection_id)
) WITHOUT ROWID;
CREATE INDEX presence_expiry ON presence (expires_ms);
CREATE TABLE health_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at_ms INTEGER NOT NULL);
";

/// `(name, SQL)` of the outbox's indexes, and its primary key's columns in order.
fn outbox_layout(path: &std::path::Path) -> (Vec<(String, String)>, Vec<String>) {
    let c = rusqlite::Connection::open(path).unwrap();
    let indexes = c
        .prepare(
            "SELECT name, sql FROM sqlite_master
             WHERE type = 'index' AND tbl_name = 'outbox' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = c
        .prepare("SELECT name FROM pragma_table_info('outbox') WHERE pk > 0 ORDER BY pk")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (indexes, key)
}

/// A database of the old layout, with a pending message broadcast and a pending notice in it,
/// opens: the outbox is rebuilt keyed by kind + id with the unique index on connection id +
/// `ce-id` + kind, both broadcasts survive as they were, a notice and a message may now share a
/// `ce-id`, opening again changes nothing, and the whole suite passes on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_opens_a_database_of_the_old_outbox_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let m = msg("old", "conn-m", "ce-1", T0, "written by the old layout");
    let mut bm = broadcast_for(&m);
    bm.attempts = 2;
    let n = notice("conn-m", "ce-2");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(OLD_SQLITE_SCHEMA).unwrap();
        c.execute(
            "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                m.room,
                m.id(),
                m.connection_id,
                m.ce_id,
                m.user_id,
                m.text,
                m.at_ms
            ],
        )
        .unwrap();
        c.execute(
            "INSERT INTO deliveries VALUES (?1, ?2, ?3)",
            rusqlite::params![n.connection_id, n.ce_id, T0],
        )
        .unwrap();
        for (b, kind) in [(&bm, "message"), (&n, "notice")] {
            c.execute(
                "INSERT INTO outbox VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params![
                    b.id,
                    kind,
                    b.room,
                    b.payload,
                    b.connection_id,
                    b.ce_id,
                    b.created_ms,
                    b.due_ms,
                    b.attempts
                ],
            )
            .unwrap();
        }
        // What the old layout refuses: a notice of the message's delivery key.
        let clash = c.execute(
            "INSERT INTO outbox VALUES ('x', 'notice', 'old', '{}', 'conn-m', 'ce-1', 0, 0, 0)",
            [],
        );
        assert!(clash.is_err(), "the old layout is the one with the clash");
    }
    assert_eq!(outbox_layout(&path).1, ["id"]);

    let store = SqliteStore::open(&path).expect("open a database of the old layout");
    let new_layout = (
        vec![
            (
                "outbox_delivery_kind".to_string(),
                "CREATE UNIQUE INDEX outbox_delivery_kind ON outbox (connection_id, ce_id, kind)"
                    .to_string(),
            ),
            (
                "outbox_due".to_string(),
                "CREATE INDEX outbox_due ON outbox (due_ms)".to_string(),
            ),
        ],
        vec!["kind".to_string(), "id".to_string()],
    );
    assert_eq!(outbox_layout(&path), new_layout);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        let leftovers: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'outbox_keyed_by_id'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leftovers, 0, "the old table is gone");
    }

    // Both broadcasts, as they were, each handed back to its own retry.
    let mut pending: Vec<Broadcast> = due(&store, i64::MAX).await;
    pending.sort_by(|a, b| a.ce_id.cmp(&b.ce_id));
    assert_eq!(pending, [bm.clone(), n.clone()]);
    let again = append(&store, m.clone()).await.unwrap();
    assert_eq!((again.inserted, again.pending.as_ref()), (false, Some(&bm)));
    let again = store.record_notice(n.clone()).await.unwrap();
    assert_eq!((again.inserted, again.pending.as_ref()), (false, Some(&n)));
    assert_eq!(all(&store, "old").await, vec![StoredMessage::from_new(&m)]);

    // What the old layout refused: a notice of the message's delivery key, beside it.
    let shared = Broadcast {
        room: "old".into(),
        ..notice("conn-m", "ce-1")
    };
    let r = store.record_notice(shared.clone()).await.unwrap();
    assert_eq!((r.inserted, r.pending.as_ref()), (true, Some(&shared)));
    for b in [&bm, &n, &shared] {
        store.broadcast_sent(b).await.unwrap();
    }
    assert_eq!(due(&store, i64::MAX).await, []);
    drop(store);

    // Opening the migrated file again is a plain open.
    let store = SqliteStore::open(&path).expect("open again");
    assert_eq!(outbox_layout(&path), new_layout);
    assert_eq!(all(&store, "old").await, vec![StoredMessage::from_new(&m)]);
    suite(Arc::new(store)).await;
}

#[tokio::test]
async fn sqlite_writer_failure_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let store = SqliteStore::open(&path).expect("open");
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER f BEFORE INSERT ON messages BEGIN SELECT RAISE(FAIL,'simulated'); END;",
        )
        .unwrap();

    let m = msg("broken", "conn-a", "ce-1", T0, "lost");
    match append(&store, m.clone()).await {
        Err(StoreError::Failed(reason)) => assert!(reason.contains("simulated"), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(all(&store, "broken").await.is_empty());

    // The writer keeps going once the fault is gone.
    other.execute_batch("DROP TRIGGER f;").unwrap();
    assert!(append(&store, m).await.unwrap().inserted);
    assert_eq!(all(&store, "broken").await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// DynamoDB (dynalite)

/// A client for a local server: static fake credentials, us-east-1, no timeouts of its own (the
/// store adds them).
pub fn local_client(endpoint: &str) -> Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "AKIDFAKE",
            "fakesecret",
            None,
            None,
            "static",
        ))
        .build();
    Client::from_conf(conf)
}

/// The aws-config loader as production uses it, with an explicit endpoint instead of the env.
fn local_loader(endpoint: &str) -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "AKIDFAKE",
            "fakesecret",
            None,
            None,
            "static",
        ))
}

async fn raw_item(
    client: &Client,
    table: &str,
    pk: &str,
    sk: &str,
) -> HashMap<String, AttributeValue> {
    client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.into()))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item()
        .cloned()
        .unwrap_or_else(|| panic!("no item {pk}/{sk}"))
}

fn number(item: &HashMap<String, AttributeValue>, k: &str) -> Option<i64> {
    item.get(k)
        .map(|v| v.as_n().expect("a number").parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_backend() {
    let t = Instant::now();
    let Some(server) = Dynalite::start_or_skip("store::dynamodb_backend").await else {
        return;
    };
    eprintln!("dynalite listening after {:?}", t.elapsed());

    let store = connect_with(
        local_loader(&server.endpoint),
        "messages",
        DynamoOptions::default(),
    )
    .await
    .expect("connect");
    assert_eq!(store.describe(), "dynamodb://messages");
    match store.health().await {
        Err(StoreError::Failed(reason)) => assert!(reason.contains("ResourceNotFound"), "{reason}"),
        other => panic!("health of a missing table: {other:?}"),
    }
    let t = Instant::now();
    store.ensure_table().await.expect("ensure_table");
    store.ensure_table().await.expect("ensure_table again");
    eprintln!("ensure_table twice: {:?}", t.elapsed());

    suite(Arc::new(store)).await;

    // connect() creating its own table when asked to.
    let auto = connect_with(
        local_loader(&server.endpoint),
        "auto-created",
        DynamoOptions {
            create_table_if_missing: true,
            ..Default::default()
        },
    )
    .await
    .expect("connect with create_table_if_missing");
    auto.health().await.expect("auto-created table is ACTIVE");
    let m = msg("auto", "conn-x", "ce-1", T0, "in the new table");
    assert!(append(&auto, m.clone()).await.unwrap().inserted);
    assert_eq!(all(&auto, "auto").await, vec![StoredMessage::from_new(&m)]);

    // Layout and expiry, read back raw.
    let client = local_client(&server.endpoint);
    let keep = DynamoStore::from_client(client.clone(), "messages", DynamoOptions::default());
    let expiring = DynamoStore::from_client(
        client.clone(),
        "messages",
        DynamoOptions {
            retention_days: Some(7),
            ..Default::default()
        },
    );
    // A connection of its own: deliveries are deduplicated on connection id + ce-id alone.
    let forever = msg("ttl", "conn-ttl", "ce-1", T0 + 1_999, "kept");
    let brief = msg("ttl", "conn-ttl", "ce-2", T0 + 2_999, "expires");
    assert!(append(&keep, forever.clone()).await.unwrap().inserted);
    assert!(append(&expiring, brief.clone()).await.unwrap().inserted);

    let item = raw_item(&client, "messages", "room#ttl", &forever.id()).await;
    assert_eq!(item.get("ttl"), None);
    assert_eq!(item["room"].as_s().unwrap(), "ttl");
    assert_eq!(item["connectionId"].as_s().unwrap(), "conn-ttl");
    assert_eq!(item["ceId"].as_s().unwrap(), "ce-1");
    assert_eq!(item["userId"].as_s().unwrap(), "user-conn-ttl");
    assert_eq!(item["text"].as_s().unwrap(), "kept");
    assert_eq!(number(&item, "atMs"), Some(T0 + 1_999));

    let item = raw_item(&client, "messages", "room#ttl", &brief.id()).await;
    assert_eq!(number(&item, "ttl"), Some((T0 + 2_999) / 1000 + 7 * 86_400));

    // A presence entry expires through the table's TTL, so a lost `disconnected` leaves no
    // ghost item forever.
    keep.presence_online(&online("ttl", "conn-p", "dora", T0, T0 + 60_500))
        .await
        .unwrap();
    let item = raw_item(&client, "messages", "presence#ttl", "conn-p").await;
    assert_eq!(item["userId"].as_s().unwrap(), "dora");
    assert_eq!(number(&item, "sinceMs"), Some(T0));
    assert_eq!(number(&item, "ttl"), Some((T0 + 60_500) / 1000 + 1));

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        keep.record_notice(notice("conn-t", "ce-9"))
            .await
            .unwrap()
            .inserted
    );
    let claim = raw_item(&client, "messages", "delivery#conn-t", "ce-9").await;
    let ttl = number(&claim, "ttl").expect("claims expire");
    assert!(
        (now + 86_400 - 5..=now + 86_400 + 5).contains(&ttl),
        "claim ttl {ttl}, now {now}"
    );
}

/// Keys of the items the `outbox` index lists, read raw (the store's own reads not involved).
async fn outbox_index(client: &Client, table: &str) -> BTreeSet<(String, String)> {
    let mut keys = BTreeSet::new();
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(table)
            .index_name("outbox")
            .key_condition_expression("ob = :p")
            .expression_attribute_values(":p", AttributeValue::S("pending".into()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("Query outbox");
        for item in out.items() {
            assert!(item.contains_key("obPayload") && item.contains_key("obDue"));
            keys.insert((
                item["pk"].as_s().unwrap().clone(),
                item["sk"].as_s().unwrap().clone(),
            ));
        }
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return keys;
        }
    }
}

async fn maybe_item(
    client: &Client,
    table: &str,
    pk: &str,
    sk: &str,
) -> Option<HashMap<String, AttributeValue>> {
    client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.into()))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item()
        .cloned()
}

/// A message claim written by hand, as a delivery leaves it when it stops between its claim and
/// its message (crash, timeout).
async fn orphan_claim(client: &Client, table: &str, m: &NewMessage) {
    let item = HashMap::from([
        (
            "pk",
            AttributeValue::S(format!("message-delivery#{}", m.connection_id)),
        ),
        ("sk", AttributeValue::S(m.ce_id.clone())),
        ("messageId", AttributeValue::S(m.id())),
        ("room", AttributeValue::S(m.room.clone())),
        ("messageAtMs", AttributeValue::N(m.at_ms.to_string())),
        ("atMs", AttributeValue::N(T0.to_string())),
        ("ttl", AttributeValue::N((T0 / 1000 + 86_400).to_string())),
    ]);
    client
        .put_item()
        .table_name(table)
        .set_item(Some(
            item.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ))
        .send()
        .await
        .expect("PutItem claim");
}

/// A delivery that stopped between its claim and its message is completed by its retry (even
/// one with a new `ce-time`), under the claimed id, with its broadcast pending; racing retries
/// complete it once. The `outbox` index lists exactly the unsent broadcasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_claim_without_message_and_the_outbox_index() {
    let Some(server) =
        Dynalite::start_or_skip("store::dynamodb_claim_without_message_and_the_outbox_index").await
    else {
        return;
    };
    let table = "outbox-test";
    let store = Arc::new(
        connect_with(
            local_loader(&server.endpoint),
            table,
            DynamoOptions {
                create_table_if_missing: true,
                ..Default::default()
            },
        )
        .await
        .expect("connect"),
    );
    let client = local_client(&server.endpoint);

    // The first delivery claimed (time T0) and stopped; its retry carries a new ce-time.
    let first = msg("crash", "conn-k", "ce-1", T0, "claimed, never stored");
    orphan_claim(&client, table, &first).await;
    let retry = NewMessage {
        at_ms: T0 + 30_000,
        ..first.clone()
    };
    let b = broadcast_for(&retry);
    assert_ne!(b.id, first.id());
    let a = store
        .append(retry.clone(), b.clone())
        .await
        .expect("append");
    assert!(a.inserted, "the retry stores the claimed message");
    assert_eq!(
        a.message,
        StoredMessage::from_new(&first),
        "claimed id and time"
    );
    let pending = a.pending.clone().expect("its broadcast is pending");
    assert_eq!(pending.id, first.id());
    assert_eq!(pending.kind, BroadcastKind::Message);
    assert_eq!(
        (pending.created_ms, pending.due_ms),
        (b.created_ms, b.due_ms)
    );
    let payload: serde_json::Value = serde_json::from_str(&pending.payload).unwrap();
    assert_eq!(
        payload["id"],
        first.id().as_str(),
        "payload names the stored id"
    );
    assert_eq!(payload["text"], first.text.as_str());
    assert_eq!(all(&*store, "crash").await, vec![a.message.clone()]);
    let item = raw_item(&client, table, "room#crash", &first.id()).await;
    assert_eq!(item["ob"].as_s().unwrap(), "pending");
    assert_eq!(item["obPayload"].as_s().unwrap(), &pending.payload);
    assert_eq!(number(&item, "obDue"), Some(b.due_ms));
    // One more retry: a duplicate, handed the same unsent broadcast.
    let again = append(&*store, retry).await.unwrap();
    assert_eq!(
        (again.inserted, again.message, again.pending),
        (false, a.message.clone(), Some(pending.clone()))
    );
    assert!(due(&*store, b.due_ms).await.contains(&pending));

    // Racing retries of an orphaned claim: exactly one stores the message.
    let raced = msg("crash", "conn-k", "ce-2", T0 + 5, "raced");
    orphan_claim(&client, table, &raced).await;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..8 {
        let store = store.clone();
        let m = NewMessage {
            at_ms: T0 + 1_000 * k,
            ..raced.clone()
        };
        tasks.spawn(async move { append(&*store, m).await.expect("racing append") });
    }
    let results = tasks.join_all().await;
    assert_eq!(results.iter().filter(|a| a.inserted).count(), 1);
    assert!(results
        .iter()
        .all(|a| a.message == StoredMessage::from_new(&raced)));
    assert_eq!(all(&*store, "crash").await.len(), 2);

    // The index lists exactly the unsent broadcasts: messages and notices, not claims, not
    // sent ones, not the health probe.
    store.health().await.expect("health");
    let mut old_notice = notice("conn-k", "ce-3");
    old_notice.created_ms = T0 - 60_000; // the oldest, though not the first due
    old_notice.due_ms = T0 + 99_000;
    assert!(
        store
            .record_notice(old_notice.clone())
            .await
            .unwrap()
            .inserted
    );
    let sent = msg("crash", "conn-k", "ce-4", T0 + 9, "sent at once");
    let sent_b = append(&*store, sent.clone())
        .await
        .unwrap()
        .pending
        .unwrap();
    store.broadcast_sent(&sent_b).await.unwrap();
    let listed = outbox_index(&client, table).await;
    let expected: BTreeSet<(String, String)> = [
        ("room#crash".to_string(), first.id()),
        ("room#crash".to_string(), raced.id()),
        ("delivery#conn-k".to_string(), "ce-3".to_string()),
    ]
    .into();
    assert_eq!(listed, expected);
    let backlog = store.backlog().await.unwrap();
    assert_eq!(backlog.pending, 3);
    assert_eq!(backlog.oldest_ms, Some(T0 - 60_000));
    // Sent: out of the index, the message itself kept without its broadcast.
    let item = raw_item(&client, table, "room#crash", &sent.id()).await;
    assert!(item.keys().all(|k| !k.starts_with("ob")), "{item:?}");
    assert_eq!(item["text"].as_s().unwrap(), "sent at once");

    // Marking a broadcast whose item is gone (expired) creates nothing.
    let ghost = broadcast_for(&msg("gone", "conn-g", "ce-1", T0, "expired"));
    store.broadcast_failed(&ghost, T0).await.unwrap();
    store.broadcast_sent(&ghost).await.unwrap();
    assert_eq!(
        maybe_item(&client, table, "room#gone", &ghost.id).await,
        None
    );
    // A failure on a sent broadcast does not bring it back.
    store.broadcast_failed(&sent_b, T0).await.unwrap();
    assert_eq!(outbox_index(&client, table).await, expected);

    for b in [&pending, &old_notice] {
        store.broadcast_sent(b).await.unwrap();
    }
    let rest = due(&*store, i64::MAX).await;
    assert_eq!(
        rest.iter().map(|b| &b.id).collect::<Vec<_>>(),
        [&raced.id()]
    );
    store.broadcast_sent(&rest[0]).await.unwrap();
    assert!(outbox_index(&client, table).await.is_empty());
    assert_eq!(
        store.backlog().await.unwrap(),
        hubhook::store::Backlog::default()
    );
}

fn assert_unavailable(
    what: &str,
    r: Result<impl std::fmt::Debug, StoreError>,
    expect: &[&str],
) -> String {
    match r {
        Err(StoreError::Unavailable(reason)) => {
            let lower = reason.to_lowercase();
            assert!(
                expect.iter().any(|e| lower.contains(e)),
                "{what}: reason {reason:?} mentions none of {expect:?}"
            );
            assert!(!reason.contains("fakesecret"), "{what}: secret in {reason}");
            reason
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

const DOWN_DEADLINE: Duration = Duration::from_millis(1500);

/// Runs one store call against a dead server: Unavailable, with a reason, within the deadline.
async fn timed(what: &str, op: &str, fut: BoxFuture<'_, Result<(), StoreError>>) {
    let expect: &[&str] = match what {
        "refused" => &["connection refused"],
        _ => &["timed out", "timeout"],
    };
    let t = Instant::now();
    let r = tokio::time::timeout(DOWN_DEADLINE * 3 + Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} {op}: hangs"));
    let took = t.elapsed();
    let reason = assert_unavailable(&format!("{what} {op}"), r, expect);
    // No endpoint (it may be internal) and no SDK debug text in a reason that reaches logs.
    for leak in [
        "127.0.0.1",
        "http://",
        "DispatchFailure",
        "ConnectorError",
        "{",
        "source:",
    ] {
        assert!(
            !reason.contains(leak),
            "{what} {op}: {leak:?} in {reason:?}"
        );
    }
    assert!(
        took < DOWN_DEADLINE + Duration::from_millis(1000),
        "{what} {op}: took {took:?}"
    );
    eprintln!("{what} {op}: unavailable after {took:?}: {reason}");
}

#[tokio::test]
async fn dynamodb_down_is_unavailable() {
    // Nothing listens on a port that was just free.
    let refused = format!("http://127.0.0.1:{}", free_port());
    // A server that accepts requests and never answers.
    let hung = StandIn::start(Script::hang()).await;

    for (what, endpoint) in [("refused", refused), ("hung", hung.url(""))] {
        let client = local_client(&endpoint);
        let store = DynamoStore::from_client(
            client,
            "messages",
            DynamoOptions {
                deadline: DOWN_DEADLINE,
                ..Default::default()
            },
        );
        futures_util::future::join_all([
            timed(
                what,
                "append",
                Box::pin(async {
                    append(&store, msg("down", "c", "1", T0, "x"))
                        .await
                        .map(drop)
                }),
            ),
            timed(
                what,
                "history",
                Box::pin(async { store.history("down", 10, None).await.map(drop) }),
            ),
            timed(
                what,
                "record_notice",
                Box::pin(async { store.record_notice(notice("c", "1")).await.map(drop) }),
            ),
            timed(what, "health", Box::pin(store.health())),
        ])
        .await;
    }
}

/// A stand-in that answers every request with one DynamoDB error (it counts the attempts).
async fn error_server(status: u16, code: &'static str) -> StandIn {
    let body = match code {
        "" => "<html>bad gateway</html>".to_string(),
        _ => format!(
            r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{code}","message":"simulated {code}"}}"#
        ),
    };
    StandIn::start(Script::handler(move |_| {
        Some(
            reply(status)
                .body("application/x-amz-json-1.0", body.as_bytes())
                .header("x-amzn-requestid", "REQ1"),
        )
    }))
    .await
}

#[tokio::test]
async fn dynamodb_throttling_is_unavailable_and_rejections_fail() {
    let opts = DynamoOptions {
        deadline: Duration::from_secs(3),
        ..Default::default()
    };
    for (status, code, unavailable) in [
        (400, "ProvisionedThroughputExceededException", true),
        (400, "ThrottlingException", true),
        (400, "RequestLimitExceeded", true),
        (500, "InternalServerError", true),
        (502, "", true), // a proxy's error page
        (400, "ValidationException", false),
        (400, "AccessDeniedException", false),
    ] {
        let server = error_server(status, code).await;
        let store =
            DynamoStore::from_client(local_client(&server.url("")), "messages", opts.clone());
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            append(&store, msg("e", "c", "1", T0, "x")),
        )
        .await
        .expect("bounded");
        let attempts = server.requests().len();
        eprintln!("{code}: {attempts} attempts: {r:?}");
        match r {
            Err(StoreError::Unavailable(reason)) if unavailable => {
                assert!(reason.contains(code), "{reason}");
                assert!(attempts > 1, "{code}: retried ({attempts} attempts)");
            }
            Err(StoreError::Failed(reason)) if !unavailable => {
                assert!(
                    reason.contains(code) && reason.contains("simulated"),
                    "{reason}"
                );
                assert_eq!(attempts, 1, "{code}: not retried");
            }
            other => panic!("{code}: {other:?}"),
        }
        let h = store.history("e", 10, None).await;
        assert_eq!(
            matches!(h, Err(StoreError::Unavailable(_))),
            unavailable,
            "{code} history: {h:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Azure Table Storage (Azurite)

pub async fn azure_store(server: &Azurite, table: &str) -> AzureTableStore {
    let account = Account::from_connection_string(&server.connection_string()).expect("account");
    azuretable::connect(
        account,
        table,
        AzureTableOptions {
            create_table_if_missing: true,
            ..Default::default()
        },
    )
    .await
    .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azuretable_backend() {
    let t = Instant::now();
    let Some(server) = Azurite::start_or_skip("store::azuretable_backend").await else {
        return;
    };
    eprintln!("azurite listening after {:?}", t.elapsed());
    // A missing table: health is a real write, and fails.
    let account = Account::from_connection_string(&server.connection_string()).unwrap();
    let missing = AzureTableStore::new(account, "missing", AzureTableOptions::default()).unwrap();
    match missing.health().await {
        Err(StoreError::Failed(reason)) => assert!(reason.contains("TableNotFound"), "{reason}"),
        other => panic!("health of a missing table: {other:?}"),
    }
    let store = azure_store(&server, "messages").await;
    store.ensure_table().await.expect("ensure_table again");
    assert_eq!(store.describe(), "azuretable://messages");
    suite(Arc::new(store)).await;
}

/// `HUBHOOK_RETENTION_DAYS`: a purge round deletes what is older than the cutoff (messages and
/// their delivery records: the same delivery is new again), keeps the rest.
async fn retention(store: &dyn MessageStore) {
    let now = hubhook::store::now_ms();
    let day = 86_400_000;
    let old = msg("ret", "conn-ret", "ce-old", now - 3 * day, "old");
    let recent = msg("ret", "conn-ret", "ce-new", now - day / 2, "recent");
    for m in [&old, &recent] {
        let a = append(store, m.clone()).await.unwrap();
        store.broadcast_sent(&a.pending.unwrap()).await.unwrap();
    }
    assert_eq!(all(store, "ret").await.len(), 2);
    let deleted = hubhook::store::purge_round(store, Some(2), now)
        .await
        .unwrap();
    assert!(deleted >= 1, "deleted {deleted}");
    assert_eq!(
        all(store, "ret")
            .await
            .into_iter()
            .map(|m| m.text)
            .collect::<Vec<_>>(),
        ["recent"]
    );
    assert_eq!(
        hubhook::store::purge_round(store, Some(2), now)
            .await
            .unwrap(),
        0
    );
    // Its claim went with it.
    let again = append(store, old.clone()).await.unwrap();
    assert!(again.inserted);
    store.broadcast_sent(&again.pending.unwrap()).await.unwrap();
    // A purge with the cutoff in the past deletes nothing.
    assert_eq!(
        hubhook::store::purge_round(store, Some(30), now)
            .await
            .unwrap(),
        0
    );
    // Without retention (the hourly round still runs, for expired presence) every message stays.
    hubhook::store::purge_round(store, None, now).await.unwrap();
    assert_eq!(all(store, "ret").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_sqlite_and_azuretable() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("r.db")).unwrap();
    retention(&sqlite).await;
    let Some(server) = Azurite::start_or_skip("store::retention_on_sqlite_and_azuretable").await
    else {
        return;
    };
    retention(&azure_store(&server, "retention").await).await;
}

#[tokio::test]
async fn azuretable_down_is_unavailable() {
    let refused = free_port();
    let hung = StandIn::start(Script::hang()).await;
    for (what, endpoint) in [
        (
            "refused",
            format!("http://127.0.0.1:{refused}/devstoreaccount1"),
        ),
        ("hung", hung.url("/devstoreaccount1")),
    ] {
        let account = Account::from_connection_string(&format!(
            "AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};TableEndpoint={endpoint}"
        ))
        .unwrap();
        let store = AzureTableStore::new(
            account,
            "messages",
            AzureTableOptions {
                deadline: DOWN_DEADLINE,
                ..Default::default()
            },
        )
        .unwrap();
        futures_util::future::join_all([
            timed(
                what,
                "append",
                Box::pin(async {
                    append(&store, msg("down", "c", "1", T0, "x"))
                        .await
                        .map(drop)
                }),
            ),
            timed(
                what,
                "history",
                Box::pin(async { store.history("down", 10, None).await.map(drop) }),
            ),
            timed(
                what,
                "due_broadcasts",
                Box::pin(async { store.due_broadcasts(T0, 10).await.map(drop) }),
            ),
            timed(what, "health", Box::pin(store.health())),
        ])
        .await;
    }
}

#[tokio::test]
async fn azuretable_throttling_is_retried_then_unavailable() {
    for (status, code, unavailable) in [
        (503, "ServerBusy", true),
        (500, "InternalError", true),
        (403, "AuthenticationFailed", false),
        (400, "InvalidInput", false),
    ] {
        let body = format!(
            r#"{{"odata.error":{{"code":"{code}","message":{{"lang":"en-US","value":"simulated {code}"}}}}}}"#
        );
        let server = StandIn::start(Script::handler(move |_| {
            Some(
                reply(status)
                    .body("application/json", body.as_bytes())
                    .header("x-ms-request-id", "REQ1"),
            )
        }))
        .await;
        let account = Account::from_connection_string(&format!(
            "AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};TableEndpoint={}",
            server.url("/devstoreaccount1")
        ))
        .unwrap();
        let store = AzureTableStore::new(
            account,
            "messages",
            AzureTableOptions {
                deadline: Duration::from_secs(3),
                ..Default::default()
            },
        )
        .unwrap();
        let r = append(&store, msg("e", "c", "1", T0, "x")).await;
        let attempts = server.requests().len();
        eprintln!("{code}: {attempts} attempts: {r:?}");
        assert!(
            !format!("{r:?}").contains(AZURITE_KEY),
            "no key in the reason"
        );
        match r {
            Err(StoreError::Unavailable(reason)) if unavailable => {
                assert!(reason.contains(code) && reason.contains("REQ1"), "{reason}");
                assert!(attempts > 1, "{code}: retried ({attempts} attempts)");
            }
            Err(StoreError::Failed(reason)) if !unavailable => {
                assert!(
                    reason.contains(code) && reason.contains("simulated"),
                    "{reason}"
                );
                assert_eq!(attempts, 1, "{code}: not retried");
            }
            other => panic!("{code}: {other:?}"),
        }
    }
}
