//! Where chat messages live: the [`MessageStore`] trait and its backends — [`sqlite`] (the
//! embedded default), [`dynamodb`] and [`azuretable`] (Azure Table Storage / Azurite).
//!
//! Every backend keys a message by room plus an id derived from the event (time + a hash of
//! connection id and `ce-id`), so the retry of a webhook maps to the row it already wrote.

pub mod azuretable;
pub mod dynamodb;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A message to append, as the chat rules built it from a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub room: String,
    pub connection_id: String,
    pub ce_id: String,
    pub user_id: Option<String>,
    pub text: String,
    /// Milliseconds since the epoch: the event's `ce-time` where it has one.
    pub at_ms: i64,
}

impl NewMessage {
    /// `<13-digit ms>-<16 hex of sha256(connection id, ce-id)>`: sorts by time, and the same
    /// delivery always gets the same id.
    pub fn id(&self) -> String {
        delivery_id(&self.connection_id, &self.ce_id, self.at_ms)
    }
}

/// `<13-digit ms>-<16 hex of sha256(connection id, 0, ce-id)>`.
fn delivery_id(connection_id: &str, ce_id: &str, at_ms: i64) -> String {
    let mut h = Sha256::new();
    h.update(connection_id.as_bytes());
    h.update([0u8]);
    h.update(ce_id.as_bytes());
    let digest = h.finalize();
    format!("{:013}-{}", at_ms.max(0), hex::encode(&digest[..8]))
}

/// A stored message, as history returns it (and as the broadcast describes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    pub id: String,
    pub room: String,
    pub from: Option<String>,
    #[serde(rename = "connectionId")]
    pub connection_id: String,
    pub text: String,
    pub at: String,
}

impl StoredMessage {
    pub fn from_new(m: &NewMessage) -> Self {
        StoredMessage {
            id: m.id(),
            room: m.room.clone(),
            from: m.user_id.clone(),
            connection_id: m.connection_id.clone(),
            text: m.text.clone(),
            at: format_ms(m.at_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub message: StoredMessage,
    /// False when this delivery was stored before (a retried webhook).
    pub inserted: bool,
    /// The message's broadcast while it is still unsent: the one just recorded, or, for a retry,
    /// the one its first delivery recorded and nobody has sent yet.
    pub pending: Option<Broadcast>,
}

/// What a delivery that stores no message (a join or leave notice) recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// False when this delivery was recorded before (a retried webhook).
    pub inserted: bool,
    /// Its broadcast while still unsent (see [`Appended::pending`]).
    pub pending: Option<Broadcast>,
}

/// Which item of a delivery carries its broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastKind {
    /// Kept with the stored message.
    Message,
    /// Kept with the delivery record of an event that stores nothing (join/leave notice).
    Notice,
}

/// A broadcast in the outbox: committed with the write that caused it, removed only after the
/// REST call succeeded, so a crash or an outage delays it but never loses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// The message id (or the notice's id): what clients drop a duplicate by.
    pub id: String,
    pub kind: BroadcastKind,
    pub room: String,
    /// The JSON text sent to the room.
    pub payload: String,
    /// The delivery that caused it.
    pub connection_id: String,
    pub ce_id: String,
    pub created_ms: i64,
    /// When the sweeper may send it: a little after creation, so it does not race the webhook
    /// that is sending it right now; pushed back after each failure.
    pub due_ms: i64,
    /// Failed sends so far.
    pub attempts: u32,
}

impl Broadcast {
    /// The id of the notice a delivery causes: like a message id, deterministic per delivery.
    pub fn notice_id(connection_id: &str, ce_id: &str, at_ms: i64) -> String {
        delivery_id(connection_id, ce_id, at_ms)
    }
}

/// How far behind the outbox is: what `/healthz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    pub pending: u64,
    /// Creation time of the oldest unsent broadcast.
    pub oldest_ms: Option<i64>,
}

/// One connection present in a room, as [`MessageStore::presence_online`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Online {
    pub room: String,
    pub connection_id: String,
    pub user_id: String,
    /// When the connection joined (ms since the epoch).
    pub since_ms: i64,
    /// After this the connection no longer counts, even without its `disconnected`.
    pub expires_ms: i64,
}

/// A user present in a room: what `GET /api/rooms/{room}/presence` lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresentUser {
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Connections of this user in the room.
    pub connections: u32,
    /// The earliest `since` of those connections.
    #[serde(skip)]
    pub since_ms: i64,
    pub since: String,
}

impl PresentUser {
    /// Groups connections `(user_id, since_ms)` by user, sorted by user id: the one way every
    /// backend builds its answer.
    pub fn group(connections: impl IntoIterator<Item = (String, i64)>) -> Vec<PresentUser> {
        let mut users = std::collections::BTreeMap::<String, (u32, i64)>::new();
        for (user, since) in connections {
            let e = users.entry(user).or_insert((0, since));
            e.0 += 1;
            e.1 = e.1.min(since);
        }
        users
            .into_iter()
            .map(|(user_id, (connections, since_ms))| PresentUser {
                user_id,
                connections,
                since_ms,
                since: format_ms(since_ms),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    /// Pass as `before` to get the next (older) page; `None` at the end.
    pub next: Option<String>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The backend cannot be reached or is overloaded: worth retrying later (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error (500).
    #[error("store error: {0}")]
    Failed(String),
    #[error("invalid cursor")]
    BadCursor,
}

impl StoreError {
    /// The one place a store failure becomes an HTTP status, whichever route met it.
    pub fn status(&self) -> http::StatusCode {
        match self {
            StoreError::BadCursor => http::StatusCode::BAD_REQUEST,
            StoreError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Failed(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Which backend to open, from `HUBHOOK_STORE`: `sqlite://PATH`, `dynamodb://TABLE` or
/// `azuretable://TABLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Sqlite(PathBuf),
    Dynamo { table: String },
    AzureTable { table: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreSpecError {
    #[error("sqlite:// needs a path, e.g. sqlite://hubhook.db")]
    NoPath,
    #[error("{0:?} is not a DynamoDB table name")]
    TableName(String),
    #[error("{0:?} is not an Azure table name (3-63 letters and digits, starting with a letter)")]
    AzureTableName(String),
    #[error("{0:?}: expected sqlite://PATH, dynamodb://TABLE or azuretable://TABLE")]
    Scheme(String),
}

/// How a store is opened: what the environment said beyond the spec itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Days to keep messages; `None` keeps them forever.
    pub retention_days: Option<u32>,
    /// Create a missing DynamoDB table (a local DynamoDB-compatible server starts empty; a real
    /// table comes from template.yaml and the function's role may not create tables).
    pub create_table_if_missing: bool,
    /// The Azure storage account of `azuretable://` (from `AZURE_STORAGE_CONNECTION_STRING`, or
    /// `AZURE_STORAGE_ACCOUNT_URL` with the host's managed identity).
    pub azure_account: Option<azuretable::Account>,
}

impl StoreSpec {
    pub fn parse(s: &str) -> Result<Self, StoreSpecError> {
        if let Some(p) = s.strip_prefix("sqlite://") {
            if p.is_empty() {
                return Err(StoreSpecError::NoPath);
            }
            Ok(StoreSpec::Sqlite(PathBuf::from(p)))
        } else if let Some(t) = s.strip_prefix("dynamodb://") {
            let ok = (3..=255).contains(&t.len())
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(StoreSpecError::TableName(t.to_string()));
            }
            Ok(StoreSpec::Dynamo {
                table: t.to_string(),
            })
        } else if let Some(t) = s.strip_prefix("azuretable://") {
            let ok = (3..=63).contains(&t.len())
                && t.starts_with(|c: char| c.is_ascii_alphabetic())
                && t.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok {
                return Err(StoreSpecError::AzureTableName(t.to_string()));
            }
            Ok(StoreSpec::AzureTable {
                table: t.to_string(),
            })
        } else {
            Err(StoreSpecError::Scheme(s.to_string()))
        }
    }

    /// Opens the backend; the only place that names them, so a new store is one file plus one
    /// arm here.
    pub async fn open(&self, opts: &OpenOptions) -> Result<SharedStore, StoreError> {
        match self {
            StoreSpec::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(path)?)),
            StoreSpec::Dynamo { table } => {
                let dynamo = dynamodb::DynamoOptions {
                    retention_days: opts.retention_days,
                    create_table_if_missing: opts.create_table_if_missing,
                    ..Default::default()
                };
                Ok(Arc::new(dynamodb::connect(table, dynamo).await?))
            }
            StoreSpec::AzureTable { table } => {
                let account = opts.azure_account.clone().ok_or_else(|| {
                    StoreError::Failed(
                        "azuretable: no account (set AZURE_STORAGE_CONNECTION_STRING, or \
                         AZURE_STORAGE_ACCOUNT_URL with a managed identity)"
                            .into(),
                    )
                })?;
                let azure = azuretable::AzureTableOptions {
                    retention_days: opts.retention_days,
                    create_table_if_missing: opts.create_table_if_missing,
                    ..Default::default()
                };
                Ok(Arc::new(azuretable::connect(account, table, azure).await?))
            }
        }
    }
}

/// One page request, validated once for every backend: the limit clamped, the cursor decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    /// The id of the last message of the previous page (exclusive bound).
    pub before: Option<String>,
}

impl PageRequest {
    pub fn new(limit: usize, before: Option<&str>) -> Result<Self, StoreError> {
        Ok(PageRequest {
            limit: limit.clamp(1, MAX_PAGE),
            before: before.map(decode_cursor).transpose()?,
        })
    }

    /// Backends fetch one row more than asked: its presence says an older page exists.
    pub fn fetch(&self) -> usize {
        self.limit + 1
    }

    /// Builds the page from up to [`PageRequest::fetch`] messages, newest first.
    pub fn page(&self, mut messages: Vec<StoredMessage>) -> Page {
        let next = if messages.len() > self.limit {
            messages.truncate(self.limit);
            messages.last().map(|m| encode_cursor(&m.id))
        } else {
            None
        };
        Page { messages, next }
    }
}

#[async_trait::async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Durably stores `m` and its pending `broadcast` in one atomic write, unless this delivery
    /// (connection id + ce-id — never the event time, which a retry may change) is stored
    /// already: then the stored message comes back with `inserted: false`, and with its
    /// broadcast if that is still unsent.
    async fn append(&self, m: NewMessage, broadcast: Broadcast) -> Result<Appended, StoreError>;

    /// Records a delivery that stores no message, with its pending `broadcast`, atomically;
    /// `inserted: false` (and the broadcast if still unsent) when it was recorded before.
    async fn record_notice(&self, broadcast: Broadcast) -> Result<Recorded, StoreError>;

    /// The REST call succeeded: the broadcast leaves the outbox.
    async fn broadcast_sent(&self, b: &Broadcast) -> Result<(), StoreError>;

    /// A send failed: count it and try again no earlier than `retry_at_ms`.
    async fn broadcast_failed(&self, b: &Broadcast, retry_at_ms: i64) -> Result<(), StoreError>;

    /// Unsent broadcasts due at `now_ms`, oldest first, at most `limit`.
    async fn due_broadcasts(&self, now_ms: i64, limit: usize)
        -> Result<Vec<Broadcast>, StoreError>;

    /// How many broadcasts are unsent, and since when.
    async fn backlog(&self) -> Result<Backlog, StoreError>;

    /// Newest first; `before` is a cursor from a previous page.
    async fn history(
        &self,
        room: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Page, StoreError>;

    /// Presence: connection `o.connection_id` of `o.user_id` is in `o.room` until
    /// `o.expires_ms` (or [`MessageStore::presence_offline`]). One atomic upsert keyed by room +
    /// connection id, so a retried `connected` rewrites the same entry: the expiry moves, the
    /// first `since_ms` is kept. Backends with a TTL should let expired entries be deleted
    /// (DynamoDB: the `ttl` attribute); reads must ignore them either way.
    async fn presence_online(&self, o: &Online) -> Result<(), StoreError>;

    /// Presence: the connection left the room. Deleting an absent entry is not an error
    /// (idempotent under retried `disconnected` deliveries).
    async fn presence_offline(&self, room: &str, connection_id: &str) -> Result<(), StoreError>;

    /// Presence: the users with at least one unexpired connection in `room` at `now_ms`, by
    /// user id ([`PresentUser::group`]).
    async fn presence(&self, room: &str, now_ms: i64) -> Result<Vec<PresentUser>, StoreError>;

    /// Whether the store can take a write now (a small real write, not just a connection).
    async fn health(&self) -> Result<(), StoreError>;

    /// Deletes at most `limit` messages whose event time is before `cutoff_ms` (with their
    /// delivery records), for `HUBHOOK_RETENTION_DAYS`; returns how many entries went. Backends
    /// with native expiry (DynamoDB's TTL) keep this default, which does nothing.
    async fn purge_expired(&self, cutoff_ms: i64, limit: usize) -> Result<u64, StoreError> {
        let _ = (cutoff_ms, limit);
        Ok(0)
    }

    fn describe(&self) -> String;
}

/// How often [`spawn_retention`] purges, and how much one round deletes at most.
pub const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
pub const RETENTION_BATCH: usize = 500;
pub const RETENTION_MAX_PER_ROUND: u64 = 50_000;

/// One housekeeping round: [`MessageStore::purge_expired`] in batches of [`RETENTION_BATCH`] until
/// nothing older than `days` is left or [`RETENTION_MAX_PER_ROUND`] entries went. Without `days`
/// (`HUBHOOK_RETENTION_DAYS` unset) messages are kept and the round only removes what a backend
/// keeps past its expiry itself (Azure Table's presence entries; SQLite prunes them on each join,
/// DynamoDB by its TTL).
pub async fn purge_round(
    store: &dyn MessageStore,
    days: Option<u32>,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let cutoff = days.map_or(0, |d| now_ms.saturating_sub(i64::from(d) * 86_400_000));
    let mut total = 0;
    while total < RETENTION_MAX_PER_ROUND {
        let n = store.purge_expired(cutoff, RETENTION_BATCH).await?;
        total += n;
        if n < RETENTION_BATCH as u64 {
            break;
        }
    }
    Ok(total)
}

/// Runs [`purge_round`] hourly, the first a minute after start. Started on every platform, with
/// or without retention: expired presence must not pile up where the backend has no TTL.
pub fn spawn_retention(store: SharedStore, days: Option<u32>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let mut tick = tokio::time::interval(RETENTION_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match purge_round(&*store, days, now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, ?days, "retention: purged expired entries"),
                Err(e) => tracing::warn!(error = %e, "retention: purge failed; next round retries"),
            }
        }
    })
}

pub type SharedStore = Arc<dyn MessageStore>;

/// Cursors are opaque to clients: the id of the last message returned, base64url'd.
pub fn encode_cursor(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

pub fn decode_cursor(c: &str) -> Result<String, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| StoreError::BadCursor)?;
    let id = String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)?;
    let valid = id.len() == 30
        && id.as_bytes()[13] == b'-'
        && id
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 13 || b.is_ascii_hexdigit());
    valid.then_some(id).ok_or(StoreError::BadCursor)
}

/// Wall-clock milliseconds since the epoch (delivery claims, outbox times).
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn format_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

pub const MAX_PAGE: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_time_ordered() {
        let m = NewMessage {
            room: "lobby".into(),
            connection_id: "c1".into(),
            ce_id: "1".into(),
            user_id: None,
            text: "hi".into(),
            at_ms: 1_700_000_000_123,
        };
        assert_eq!(m.id(), m.clone().id());
        assert!(m.id().starts_with("1700000000123-"));
        let later = NewMessage {
            at_ms: m.at_ms + 1,
            ..m.clone()
        };
        assert!(later.id() > m.id());
        let other = NewMessage {
            ce_id: "2".into(),
            ..m.clone()
        };
        assert_ne!(other.id(), m.id());
        assert_eq!(decode_cursor(&encode_cursor(&m.id())).unwrap(), m.id());
        for bad in [
            "",
            "!!",
            "aGVsbG8",
            &encode_cursor("1700000000123-zzzzzzzzzzzzzzzz"),
        ] {
            assert_eq!(decode_cursor(bad), Err(StoreError::BadCursor), "{bad}");
        }
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
