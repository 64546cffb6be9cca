//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that commits whatever appends are waiting as a single
//! transaction (group commit): with `synchronous=FULL` each commit is one fsync, so concurrent
//! webhooks share it instead of queueing behind one fsync each. A webhook is answered only after
//! its transaction committed, so an acknowledged message survives `kill -9` (and power loss).
//! Reads use their own connections; WAL lets them run beside the writer.
//!
//! Two things stay off the path of an acknowledgement. Marking a broadcast sent commits without
//! a sync of its own ([`Durability::WithNext`]): the next durable commit's sync covers it, a
//! `kill -9` loses nothing (the write is in the OS), and what power loss could take is the mark
//! alone — one resend, which clients drop by id. And the WAL is checkpointed once the writer has
//! answered and nothing waits: SQLite's auto-checkpoint ran inside whichever commit crossed 1,000
//! pages, adding the checkpoint's writes and syncs to the acknowledgements of that batch (about
//! one message in a hundred in the dev loop: its p99).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::wal::CheckpointMode;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::*;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    room          TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    connection_id TEXT    NOT NULL,
    ce_id         TEXT    NOT NULL,
    user_id       TEXT,
    text          TEXT    NOT NULL,
    at_ms         INTEGER NOT NULL,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_delivery ON messages (connection_id, ce_id);
CREATE INDEX IF NOT EXISTS messages_at ON messages (at_ms);
CREATE TABLE IF NOT EXISTS deliveries (
    connection_id TEXT    NOT NULL,
    ce_id         TEXT    NOT NULL,
    at_ms         INTEGER NOT NULL,
    PRIMARY KEY (connection_id, ce_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id            TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    room          TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    connection_id TEXT    NOT NULL,
    ce_id         TEXT    NOT NULL,
    created_ms    INTEGER NOT NULL,
    due_ms        INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS outbox_delivery_kind ON outbox (connection_id, ce_id, kind);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due_ms);
CREATE TABLE IF NOT EXISTS presence (
    room          TEXT    NOT NULL,
    connection_id TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    since_ms      INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,
    PRIMARY KEY (room, connection_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS presence_expiry ON presence (expires_ms);
CREATE TABLE IF NOT EXISTS health_probe (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    at_ms INTEGER NOT NULL
);
";

/// The outbox's columns, in the order both of its layouts share.
const OUTBOX_COLUMNS: &str =
    "id, kind, room, payload, connection_id, ce_id, created_ms, due_ms, attempts";

/// Creates what is missing of [`SCHEMA`], first bringing a database of an older layout up to it.
///
/// Before, the outbox was keyed by `id` with a unique index `outbox_delivery` on connection id +
/// `ce-id`, so a pending notice and a pending message of one delivery key (both kinds' ids come
/// from connection id, `ce-id` and event time) collided. A table's primary key cannot be altered
/// in place: the old table is renamed, the new one created by the schema, the rows copied over.
/// The caller runs this in the schema's one transaction, so a failure leaves the old layout whole.
fn migrate_and_create(c: &Connection) -> rusqlite::Result<()> {
    let kind_in_key: Option<i64> = c
        .query_row(
            "SELECT pk FROM pragma_table_info('outbox') WHERE name = 'kind'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let rebuild = kind_in_key == Some(0);
    // The indexes go first: renamed with their table, their names would keep the schema's
    // `IF NOT EXISTS` from creating them on the new one.
    c.execute_batch("DROP INDEX IF EXISTS outbox_delivery;")?;
    if rebuild {
        c.execute_batch(
            "DROP INDEX IF EXISTS outbox_due; ALTER TABLE outbox RENAME TO outbox_keyed_by_id;",
        )?;
    }
    c.execute_batch(SCHEMA)?;
    if rebuild {
        c.execute_batch(&format!(
            "INSERT INTO outbox ({OUTBOX_COLUMNS}) SELECT {OUTBOX_COLUMNS} FROM outbox_keyed_by_id;
             DROP TABLE outbox_keyed_by_id;"
        ))?;
    }
    Ok(())
}

/// Writes queued beyond this are refused with 503 instead of growing memory without bound when
/// the disk cannot keep up; the service (or client) retries later.
const MAX_QUEUED: usize = 16 * 1024;

/// Writes waiting beyond this are left for the next transaction, bounding commit latency.
const MAX_BATCH: usize = 512;

/// WAL size (pages) from which the writer checkpoints when no write is waiting: SQLite's own
/// auto-checkpoint threshold.
const CHECKPOINT_PAGES: i32 = 1_000;
/// WAL size from which it checkpoints even with writes waiting (they never stopped coming), so
/// the file stays bounded.
const FORCE_CHECKPOINT_PAGES: i32 = 4 * CHECKPOINT_PAGES;

/// Whether a write's commit must reach the disk before its caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Synced (fdatasync) before the answer (`synchronous=FULL`).
    Now,
    /// Written to the WAL without a sync (`synchronous=NORMAL`); durable with the next `Now`
    /// commit or checkpoint. Safe against a process crash; power loss may drop it.
    WithNext,
}

/// Answers a caller once its batch committed (or failed).
type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One write of a batch: runs inside the batch's transaction, in a savepoint of its own.
trait Op: Send {
    fn durability(&self) -> Durability;
    /// Runs the write; false when it failed (its savepoint is then rolled back).
    fn run(self: Box<Self>, c: &Connection) -> (bool, Finish);
    /// The batch could not even begin.
    fn fail(self: Box<Self>, e: StoreError);
}

struct Typed<T, F> {
    durability: Durability,
    f: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Op for Typed<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn durability(&self) -> Durability {
        self.durability
    }

    fn run(self: Box<Self>, c: &Connection) -> (bool, Finish) {
        let Typed { f, reply, .. } = *self;
        let result = f(c);
        let ok = result.is_ok();
        (
            ok,
            Box::new(move |commit| drop(reply.send(commit.and(result)))),
        )
    }

    fn fail(self: Box<Self>, e: StoreError) {
        drop(self.reply.send(Err(e)));
    }
}

pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::SyncSender<Box<dyn Op>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

fn failed(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Unavailable(format!("sqlite: {e}"))
        }
        e => StoreError::Failed(format!("sqlite: {e}")),
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(failed)?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(failed)?;
    c.pragma_update(None, "synchronous", "FULL")
        .map_err(failed)?;
    Ok(c)
}

impl SqliteStore {
    /// Opens (creating file and schema if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut writer_conn = open(&path)?;
        // One transaction: outside one, each of the schema's ten statements commits (and, with
        // synchronous=FULL, fsyncs) on its own — milliseconds of a cold start on a fresh file.
        let schema = writer_conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed)?;
        migrate_and_create(&schema).map_err(failed)?;
        schema.commit().map_err(failed)?;
        let readers = (0..2).map(|_| open(&path)).collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::sync_channel(MAX_QUEUED);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer_conn, rx))
            .map_err(|e| StoreError::Failed(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            path,
            writer: tx,
            readers: Arc::new(Mutex::new(readers)),
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().ok().and_then(|mut v| v.pop());
            let conn = match conn {
                Some(c) => c,
                None => open(&path)?,
            };
            let out = f(&conn);
            if let Ok(mut v) = readers.lock() {
                v.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Failed(format!("read task: {e}")))?
    }

    /// Runs `f` in the writer's next transaction; answers after COMMIT (and its fsync).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_with(Durability::Now, f).await
    }

    async fn write_with<T: Send + 'static>(
        &self,
        durability: Durability,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .try_send(Box::new(Typed {
                durability,
                f,
                reply,
            }))
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => StoreError::Unavailable(format!(
                    "sqlite writer overloaded ({MAX_QUEUED} writes queued)"
                )),
                mpsc::TrySendError::Disconnected(_) => {
                    StoreError::Unavailable("sqlite writer stopped".into())
                }
            })?;
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Box<dyn Op>>) {
    // The connection opens with synchronous=FULL.
    let mut synced = Durability::Now;
    let wal_pages = Arc::new(AtomicI32::new(0));
    let hook_pages = wal_pages.clone();
    // Replaces SQLite's auto-checkpoint (itself a WAL hook); runs inside COMMIT, so it only counts.
    if let Err(e) = conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
        hook_pages.store(pages, Ordering::Relaxed);
        Ok(())
    })) {
        tracing::warn!(error = %e, "sqlite: cannot take over checkpoints; SQLite checkpoints in the commit");
    }
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(op) => op,
            None => match rx.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let wanted = if batch.iter().any(|op| op.durability() == Durability::Now) {
            Durability::Now
        } else {
            Durability::WithNext
        };
        if wanted != synced {
            // Prepared once: under load the level changes with nearly every batch.
            let pragma = match wanted {
                Durability::Now => "PRAGMA synchronous = FULL",
                Durability::WithNext => "PRAGMA synchronous = NORMAL",
            };
            if let Err(e) = run_cached(&conn, pragma) {
                let e = failed(e);
                batch.into_iter().for_each(|op| op.fail(e.clone()));
                continue;
            }
            synced = wanted;
        }
        commit_batch(&mut conn, batch);
        let pages = wal_pages.load(Ordering::Relaxed);
        if pages >= CHECKPOINT_PAGES {
            next = rx.try_recv().ok();
            if next.is_none() || pages >= FORCE_CHECKPOINT_PAGES {
                checkpoint(&conn);
            }
        }
    }
}

/// A passive checkpoint: copies what it can without waiting for readers; once the whole WAL is
/// in the database, the next commit starts the WAL over instead of growing it.
fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
        tracing::warn!(error = %e, "sqlite: checkpoint failed; the WAL grows until one succeeds");
    }
}

/// One transaction for the whole batch (group commit: one fsync for every caller waiting).
/// Each write runs in a savepoint, so one that fails halfway leaves nothing behind while the
/// others commit. Answers go out only after COMMIT returned; if it fails, every caller in the
/// batch gets the error and nothing of the batch is kept.
fn commit_batch(conn: &mut Connection, batch: Vec<Box<dyn Op>>) {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = failed(e);
            return batch.into_iter().for_each(|op| op.fail(e.clone()));
        }
    };
    let mut finishes = Vec::with_capacity(batch.len());
    for op in batch {
        finishes.push(in_savepoint(&tx, op));
    }
    let commit = tx.commit().map_err(failed);
    for finish in finishes {
        finish(commit.clone());
    }
}

/// Statements run for every write: prepared once per connection (the profile of W2 showed
/// SQLite's parser on every savepoint when they went through `execute_batch`).
fn run_cached(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
}

fn in_savepoint(tx: &rusqlite::Transaction<'_>, op: Box<dyn Op>) -> Finish {
    if let Err(e) = run_cached(tx, "SAVEPOINT op") {
        op.fail(failed(e));
        return Box::new(|_| {});
    }
    let (ok, finish) = op.run(tx);
    let end = if ok {
        run_cached(tx, "RELEASE op")
    } else {
        run_cached(tx, "ROLLBACK TO op").and_then(|()| run_cached(tx, "RELEASE op"))
    };
    match end {
        Ok(()) => finish,
        Err(e) => {
            let e = failed(e);
            Box::new(move |_| finish(Err(e)))
        }
    }
}
fn insert_message(c: &Connection, m: &NewMessage, b: &Broadcast) -> Result<Appended, StoreError> {
    let id = m.id();
    let n = c
        .prepare_cached(
            "INSERT INTO messages (room, id, connection_id, ce_id, user_id, text, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                m.room,
                id,
                m.connection_id,
                m.ce_id,
                m.user_id,
                m.text,
                m.at_ms
            ])
        })
        .map_err(failed)?;
    if n == 1 {
        insert_broadcast(c, b)?;
        return Ok(Appended {
            message: StoredMessage::from_new(m),
            inserted: true,
            pending: Some(b.clone()),
        });
    }
    let existing = c
        .prepare_cached(
            "SELECT room, id, connection_id, user_id, text, at_ms FROM messages WHERE connection_id = ?1 AND ce_id = ?2",
        )
        .and_then(|mut s| s.query_row(params![m.connection_id, m.ce_id], row_to_message).optional())
        .map_err(failed)?;
    let message = existing.ok_or_else(|| {
        StoreError::Failed(format!("message id {id} collides with another delivery"))
    })?;
    Ok(Appended {
        message,
        inserted: false,
        pending: pending_of(c, BroadcastKind::Message, &m.connection_id, &m.ce_id)?,
    })
}

fn record_notice(c: &Connection, b: &Broadcast) -> Result<Recorded, StoreError> {
    let n = c
        .prepare_cached(
            "INSERT INTO deliveries (connection_id, ce_id, at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![b.connection_id, b.ce_id, now_ms()]))
        .map_err(failed)?;
    if n == 1 {
        insert_broadcast(c, b)?;
        return Ok(Recorded {
            inserted: true,
            pending: Some(b.clone()),
        });
    }
    Ok(Recorded {
        inserted: false,
        pending: pending_of(c, BroadcastKind::Notice, &b.connection_id, &b.ce_id)?,
    })
}

fn insert_broadcast(c: &Connection, b: &Broadcast) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO outbox (id, kind, room, payload, connection_id, ce_id, created_ms, due_ms, attempts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            b.id,
            kind_name(b.kind),
            b.room,
            b.payload,
            b.connection_id,
            b.ce_id,
            b.created_ms,
            b.due_ms,
            b.attempts
        ])
    })
    .map(drop)
    .map_err(failed)
}

/// The still-unsent broadcast of a delivery, if any. A notice and a message may share a delivery
/// key, so the kind picks which one.
fn pending_of(
    c: &Connection,
    kind: BroadcastKind,
    connection_id: &str,
    ce_id: &str,
) -> Result<Option<Broadcast>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox
         WHERE connection_id = ?1 AND ce_id = ?2 AND kind = ?3"
    ))
    .and_then(|mut s| {
        s.query_row(
            params![connection_id, ce_id, kind_name(kind)],
            row_to_broadcast,
        )
        .optional()
    })
    .map_err(failed)
}

fn kind_name(k: BroadcastKind) -> &'static str {
    match k {
        BroadcastKind::Message => "message",
        BroadcastKind::Notice => "notice",
    }
}

fn row_to_broadcast(r: &rusqlite::Row<'_>) -> rusqlite::Result<Broadcast> {
    let kind: String = r.get(1)?;
    Ok(Broadcast {
        id: r.get(0)?,
        kind: if kind == "notice" {
            BroadcastKind::Notice
        } else {
            BroadcastKind::Message
        },
        room: r.get(2)?,
        payload: r.get(3)?,
        connection_id: r.get(4)?,
        ce_id: r.get(5)?,
        created_ms: r.get(6)?,
        due_ms: r.get(7)?,
        attempts: r.get(8)?,
    })
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        room: r.get(0)?,
        id: r.get(1)?,
        connection_id: r.get(2)?,
        from: r.get(3)?,
        text: r.get(4)?,
        at: format_ms(r.get(5)?),
    })
}

#[async_trait::async_trait]
impl MessageStore for SqliteStore {
    async fn append(&self, m: NewMessage, b: Broadcast) -> Result<Appended, StoreError> {
        self.write(move |c| insert_message(c, &m, &b)).await
    }

    async fn record_notice(&self, b: Broadcast) -> Result<Recorded, StoreError> {
        self.write(move |c| record_notice(c, &b)).await
    }

    async fn broadcast_sent(&self, b: &Broadcast) -> Result<(), StoreError> {
        let (kind, id) = (kind_name(b.kind), b.id.clone());
        self.write_with(Durability::WithNext, move |c| {
            c.prepare_cached("DELETE FROM outbox WHERE kind = ?1 AND id = ?2")
                .and_then(|mut s| s.execute(params![kind, id]))
                .map(drop)
                .map_err(failed)
        })
        .await
    }

    async fn broadcast_failed(&self, b: &Broadcast, retry_at_ms: i64) -> Result<(), StoreError> {
        let (kind, id) = (kind_name(b.kind), b.id.clone());
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, due_ms = ?3 WHERE kind = ?1 AND id = ?2",
            )
            .and_then(|mut s| s.execute(params![kind, id, retry_at_ms]))
                .map(drop)
                .map_err(failed)
        })
        .await
    }

    async fn due_broadcasts(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Broadcast>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE due_ms <= ?1 ORDER BY due_ms LIMIT ?2"
            ))
            .and_then(|mut s| {
                s.query_map(params![now_ms, limit as i64], row_to_broadcast)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(failed)
        })
        .await
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        self.read(|c| {
            c.query_row("SELECT count(*), min(created_ms) FROM outbox", [], |r| {
                Ok(Backlog {
                    pending: r.get::<_, i64>(0)? as u64,
                    oldest_ms: r.get(1)?,
                })
            })
            .map_err(failed)
        })
        .await
    }

    async fn history(
        &self,
        room: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Page, StoreError> {
        let page = PageRequest::new(limit, before)?;
        let room = room.to_string();
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT room, id, connection_id, user_id, text, at_ms FROM messages
                     WHERE room = ?1 AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
                )
                .map_err(failed)?;
            let messages = s
                .query_map(
                    params![room, page.before, page.fetch() as i64],
                    row_to_message,
                )
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(failed)?;
            Ok(page.page(messages))
        })
        .await
    }

    /// An upsert that keeps the first `since_ms`; it also deletes entries expired before its
    /// own `since_ms`, so lost `disconnected` events do not pile up.
    async fn presence_online(&self, o: &Online) -> Result<(), StoreError> {
        let o = o.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO presence (room, connection_id, user_id, since_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (room, connection_id) DO UPDATE
                 SET user_id = excluded.user_id, expires_ms = excluded.expires_ms",
            )
            .and_then(|mut s| {
                s.execute(params![
                    o.room,
                    o.connection_id,
                    o.user_id,
                    o.since_ms,
                    o.expires_ms
                ])
            })
            .and_then(|_| c.prepare_cached("DELETE FROM presence WHERE expires_ms < ?1"))
            .and_then(|mut s| s.execute(params![o.since_ms]))
            .map(drop)
            .map_err(failed)
        })
        .await
    }

    async fn presence_offline(&self, room: &str, connection_id: &str) -> Result<(), StoreError> {
        let (room, connection_id) = (room.to_string(), connection_id.to_string());
        self.write(move |c| {
            c.prepare_cached("DELETE FROM presence WHERE room = ?1 AND connection_id = ?2")
                .and_then(|mut s| s.execute(params![room, connection_id]))
                .map(drop)
                .map_err(failed)
        })
        .await
    }

    async fn presence(&self, room: &str, now_ms: i64) -> Result<Vec<PresentUser>, StoreError> {
        let room = room.to_string();
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT user_id, since_ms FROM presence WHERE room = ?1 AND expires_ms > ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![room, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<Vec<(String, i64)>, _>>()
                })
                .map_err(failed)?;
            Ok(PresentUser::group(rows))
        })
        .await
    }

    /// A one-row write through the writer: a full disk, a read-only file or a lock shows here.
    async fn health(&self) -> Result<(), StoreError> {
        self.write(|c| {
            c.prepare_cached(
                "INSERT INTO health_probe (id, at_ms) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
            )
            .and_then(|mut s| s.execute(params![now_ms()]))
            .map(drop)
            .map_err(failed)
        })
        .await
    }

    /// Deletes, in one write, up to `limit` messages with an event time before `cutoff_ms`
    /// (index `messages_at`) and then notice deliveries recorded before it. Unsent broadcasts
    /// stay in the outbox (the sweeper sends or gives them up).
    async fn purge_expired(&self, cutoff_ms: i64, limit: usize) -> Result<u64, StoreError> {
        self.write(move |c| {
            let messages = c
                .prepare_cached(
                    "DELETE FROM messages WHERE (room, id) IN
                     (SELECT room, id FROM messages WHERE at_ms < ?1 LIMIT ?2)",
                )
                .and_then(|mut s| s.execute(params![cutoff_ms, limit as i64]))
                .map_err(failed)?;
            let left = limit.saturating_sub(messages) as i64;
            let deliveries = c
                .prepare_cached(
                    "DELETE FROM deliveries WHERE (connection_id, ce_id) IN
                     (SELECT connection_id, ce_id FROM deliveries WHERE at_ms < ?1 LIMIT ?2)",
                )
                .and_then(|mut s| s.execute(params![cutoff_ms, left]))
                .map_err(failed)?;
            Ok((messages + deliveries) as u64)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(i: usize) -> (NewMessage, Broadcast) {
        let m = NewMessage {
            room: "wal".into(),
            connection_id: "conn".into(),
            ce_id: format!("ce-{i}"),
            user_id: None,
            text: format!("message {i}"),
            at_ms: 1_700_000_000_000 + i as i64,
        };
        let b = Broadcast {
            id: m.id(),
            kind: BroadcastKind::Message,
            room: m.room.clone(),
            payload: format!(r#"{{"type":"message","id":"{}"}}"#, m.id()),
            connection_id: m.connection_id.clone(),
            ce_id: m.ce_id.clone(),
            created_ms: m.at_ms,
            due_ms: m.at_ms,
            attempts: 0,
        };
        (m, b)
    }

    /// SQLite's auto-checkpoint is replaced by the writer's: without a checkpoint the WAL would
    /// grow by every commit (about nine pages a message here). The marks, committed without a
    /// sync of their own, are all there after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_keep_the_wal_bounded_and_lazy_marks_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let store = SqliteStore::open(&path).unwrap();
        let wal = dir.path().join("wal.db-wal");
        let page: i64 = open(&path)
            .unwrap()
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap();
        let page = page as u64;
        let mut largest = 0;
        for i in 0..1_500 {
            let (m, b) = message(i);
            let appended = store.append(m, b).await.unwrap();
            store
                .broadcast_sent(&appended.pending.unwrap())
                .await
                .unwrap();
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        // Written one after another, nothing waits after a commit: the WAL starts over near
        // the first threshold (FORCE_CHECKPOINT_PAGES is for writers that never pause). The
        // margin covers a next write that arrives before the writer looks, now and then.
        let bound = (CHECKPOINT_PAGES as u64 + 256) * (page + 24);
        assert!(
            largest <= bound,
            "the WAL grew to {largest} bytes (bound {bound}) over 1,500 messages"
        );
        assert!(largest > 0, "no WAL was written");

        // 32 writers at once: writes often wait, the forced checkpoint bounds the file.
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..60 {
                        let (m, b) = message(10_000 + t * 100 + i);
                        let appended = store.append(m, b).await.unwrap();
                        store
                            .broadcast_sent(&appended.pending.unwrap())
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let mut largest = 0;
        while !tasks.iter().all(|t| t.is_finished()) {
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let bound = (FORCE_CHECKPOINT_PAGES as u64 + 512) * (page + 24);
        assert!(
            largest <= bound,
            "the WAL grew to {largest} bytes (bound {bound})"
        );
        let store = Arc::into_inner(store).unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.due_broadcasts(i64::MAX, 10).await.unwrap().is_empty());
        let page = store.history("wal", 5, None).await.unwrap();
        assert_eq!(page.messages.len(), 5);
    }
}
