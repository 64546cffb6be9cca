//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that commits whatever appends are waiting as a single
//! transaction (group commit): with `synchronous=FULL` each commit is one fsync, so concurrent
//! webhooks share it instead of queueing behind one fsync each. A webhook is answered only after
//! its transaction committed, so an acknowledged message survives `kill -9` (and power loss).
//! Reads use their own connections; WAL lets them run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

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
CREATE TABLE IF NOT EXISTS deliveries (
    connection_id TEXT    NOT NULL,
    ce_id         TEXT    NOT NULL,
    at_ms         INTEGER NOT NULL,
    PRIMARY KEY (connection_id, ce_id)
) WITHOUT ROWID;
";

/// Writes queued beyond this are refused with 503 instead of growing memory without bound when
/// the disk cannot keep up; the service (or client) retries later.
const MAX_QUEUED: usize = 16 * 1024;

/// Appends waiting beyond this are left for the next transaction, bounding commit latency.
const MAX_BATCH: usize = 512;

enum Write {
    Append(NewMessage, oneshot::Sender<Result<Appended, StoreError>>),
    Claim(String, String, oneshot::Sender<Result<bool, StoreError>>),
}

pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::SyncSender<Write>,
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
        let writer_conn = open(&path)?;
        writer_conn.execute_batch(SCHEMA).map_err(failed)?;
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

    fn submit(&self, w: Write) -> Result<(), StoreError> {
        self.writer.try_send(w).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => StoreError::Unavailable(format!(
                "sqlite writer overloaded ({MAX_QUEUED} writes queued)"
            )),
            mpsc::TrySendError::Disconnected(_) => {
                StoreError::Unavailable("sqlite writer stopped".into())
            }
        })
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, batch);
    }
}

enum Pending {
    Append(
        oneshot::Sender<Result<Appended, StoreError>>,
        Result<Appended, StoreError>,
    ),
    Claim(
        oneshot::Sender<Result<bool, StoreError>>,
        Result<bool, StoreError>,
    ),
}

/// One transaction for the whole batch. Answers go out only after COMMIT returned; if it fails,
/// every caller in the batch gets the error and nothing of the batch is kept.
fn commit_batch(conn: &mut Connection, batch: Vec<Write>) {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, failed(e)),
    };
    let mut pending = Vec::with_capacity(batch.len());
    for w in batch {
        match w {
            Write::Append(m, reply) => {
                let r = insert_message(&tx, &m);
                pending.push(Pending::Append(reply, r));
            }
            Write::Claim(c, id, reply) => {
                let r = tx
                    .prepare_cached("INSERT INTO deliveries (connection_id, ce_id, at_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
                    .and_then(|mut s| s.execute(params![c, id, now_ms()]))
                    .map(|n| n == 1)
                    .map_err(failed);
                pending.push(Pending::Claim(reply, r));
            }
        }
    }
    let commit = tx.commit().map_err(failed);
    for p in pending {
        match p {
            Pending::Append(reply, r) => drop(reply.send(commit.clone().and(r))),
            Pending::Claim(reply, r) => drop(reply.send(commit.clone().and(r))),
        }
    }
}

fn fail_all(batch: Vec<Write>, e: StoreError) {
    for w in batch {
        match w {
            Write::Append(_, reply) => drop(reply.send(Err(e.clone()))),
            Write::Claim(_, _, reply) => drop(reply.send(Err(e.clone()))),
        }
    }
}

fn insert_message(tx: &rusqlite::Transaction<'_>, m: &NewMessage) -> Result<Appended, StoreError> {
    let id = m.id();
    let n = tx
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
        return Ok(Appended {
            message: StoredMessage::from_new(m),
            inserted: true,
        });
    }
    let existing = tx
        .prepare_cached(
            "SELECT room, id, connection_id, user_id, text, at_ms FROM messages WHERE connection_id = ?1 AND ce_id = ?2",
        )
        .and_then(|mut s| s.query_row(params![m.connection_id, m.ce_id], row_to_message).optional())
        .map_err(failed)?;
    existing
        .map(|message| Appended {
            message,
            inserted: false,
        })
        .ok_or_else(|| {
            StoreError::Failed(format!("message id {id} collides with another delivery"))
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
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Write::Append(m, tx))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?
    }

    async fn claim_delivery(&self, connection_id: &str, ce_id: &str) -> Result<bool, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Write::Claim(
            connection_id.to_string(),
            ce_id.to_string(),
            tx,
        ))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?
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

    async fn health(&self) -> Result<(), StoreError> {
        self.read(|c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
                .map_err(failed)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}
