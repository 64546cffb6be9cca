//! The DynamoDB store: one table, partition key `pk` (S) and sort key `sk` (S), on-demand billing,
//! and one sparse global secondary index, `outbox` (`template.yaml` defines both for production;
//! [`DynamoStore::ensure_table`] creates them locally).
//!
//! # Items
//!
//! | item | `pk` | `sk` | other attributes |
//! |---|---|---|---|
//! | message | `room#<room>` | [`NewMessage::id`] | `room`, `connectionId`, `ceId`, `userId` (absent when anonymous), `text`, `atMs` (N), `ttl` (N, only with a retention); its pending broadcast (below) until sent |
//! | message claim | `message-delivery#<connectionId>` | `ce-id` | `messageId`, `room`, `messageAtMs` (N: the event time the id was made from), `atMs` (N, when claimed), `ttl` (N, one day after the claim) |
//! | notice claim | `delivery#<connectionId>` | `ce-id` | `room`, `connectionId`, `ceId`, `atMs`, `ttl` (as above); its pending broadcast until sent |
//! | health probe | `health#probe` | `probe` | `atMs`, `ttl` (N, an hour after the probe) |
//! | presence | `presence#<room>` | `<connectionId>` | `userId`, `sinceMs` (N, kept from the first write), `expiresMs` (N), `ttl` (N, `expiresMs` in seconds) |
//!
//! A presence entry is one `UpdateItem` (`SET … sinceMs = if_not_exists(sinceMs, :since)`), so a
//! retried `connected` rewrites the same item; `disconnected` deletes it. A lost `disconnected`
//! leaves an entry that reads ignore once `expiresMs` passed and that the table's TTL deletes
//! (within a day or two on AWS). A room's presence is one consistent `Query` of its partition.
//!
//! A pending broadcast is a set of attributes on the item whose write caused it: `obId`, `obKind`
//! (`message`/`notice`), `obPayload` (S, the JSON sent), `obCreated`, `obDue`, `obAttempts` (N),
//! and `ob` = `"pending"` (S). The index `outbox` (hash `ob`, range `obDue`, projection ALL) holds
//! only items that have both `ob` and `obDue`, so it lists exactly the unsent broadcasts, oldest
//! due first; sending one `REMOVE`s those attributes and the item leaves the index.
//!
//! A room is one partition, and the sort key starts with the 13-digit event time in ms, so
//! history is one `Query` newest-first (`ScanIndexForward=false`) with `sk < cursor` for older
//! pages — the same order and cursors as the SQLite store.
//!
//! # Atomicity without transactions
//!
//! Every write that must be atomic is one `PutItem` or `UpdateItem` of one item (no
//! `TransactWriteItems`: dynalite, which the tests run against, does not have it):
//!
//! - **A message and its broadcast** are one item, written by one conditional `PutItem`.
//! - **A notice and its broadcast** are the notice's claim item, one conditional `PutItem`.
//! - **Deduplication** does not depend on `ce-time` (a retry may carry a new one, and the message
//!   id is made from it): an append first puts the message claim, keyed by connection id +
//!   `ce-id`, with `attribute_not_exists(pk)`. It names the message id (from *this* delivery's
//!   time) and room. A delivery that finds the claim taken reads it (consistent read) and then
//!   the message it names: present, it answers `inserted: false` with that message and its
//!   broadcast if still unsent; absent — the first delivery died (or timed out) between the two
//!   writes, or is between them right now — it writes the message itself, under the claimed id
//!   and time, with `attribute_not_exists(pk)`. Of any number of racing deliveries exactly one
//!   message put succeeds and reports `inserted: true`; the others read what it wrote.
//!
//! Message claims and notice claims live under different `pk` prefixes, so a notice and a
//! message with the same `ce-id` stay distinct deliveries (as in SQLite). Claims only have to
//! outlive the retry window of Web PubSub (minutes), so they expire after a day through the
//! table's TTL; a notice still unsent by then expires with its claim.
//!
//! # The outbox index
//!
//! GSI reads are eventually consistent (on AWS; dynalite updates them with the write): a
//! broadcast may show in [`MessageStore::due_broadcasts`] a moment after its write, or once more
//! right after it was sent — the outbox sends at least once, and clients drop duplicates by id.
//! All pending broadcasts share one index partition (`ob = "pending"`), which is fine for a
//! chat's write rate (a partition takes ~1000 writes/s; each broadcast costs two index writes).
//!
//! # Failures
//!
//! Every SDK call is bounded: connect timeout, per-attempt timeout, and an operation timeout equal
//! to [`DynamoOptions::deadline`] that also bounds the retries (standard mode: throttling,
//! timeouts, connection failures, 5xx). Every store call (which may make several SDK calls) is
//! bounded by the same deadline as a whole. Without these the SDK waits forever on a server that
//! accepts a connection and never answers. Throttling, timeouts and connection failures become
//! [`StoreError::Unavailable`] (HTTP 503: Web PubSub retries later); other errors
//! [`StoreError::Failed`].

use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, IndexStatus,
    KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;

use super::*;

type Item = HashMap<String, AttributeValue>;

/// Name of the expiry attribute (epoch seconds); the table's TTL must be enabled on it.
pub const TTL_ATTRIBUTE: &str = "ttl";
/// How long a delivery claim is kept: far beyond Web PubSub's retry window.
pub const CLAIM_TTL_SECS: i64 = 86_400;
/// The sparse global secondary index that lists the unsent broadcasts.
pub const OUTBOX_INDEX: &str = "outbox";
/// Value of the index's hash key `ob` on every item with an unsent broadcast.
const PENDING: &str = "pending";
/// Removes every attribute of a pending broadcast (see [`outbox_attributes`]) once it is sent.
const REMOVE_BROADCAST: &str = "REMOVE ob, obDue, obId, obKind, obPayload, obCreated, obAttempts";
/// [`MessageStore::backlog`] reads at most this many index entries.
pub const BACKLOG_SCAN_LIMIT: u64 = 10_000;
/// How long the health probe's item is kept.
const PROBE_TTL_SECS: i64 = 3_600;
/// Longest a reason in a [`StoreError`] gets (they end up in logs and webhook answers).
const MAX_REASON: usize = 600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoOptions {
    /// Messages expire this many days after their event time (`ttl` attribute); `None` or
    /// `Some(0)` keeps them forever.
    pub retention_days: Option<u32>,
    /// Upper bound of one store call, retries included.
    pub deadline: Duration,
    /// [`connect`] / [`connect_with`] run [`DynamoStore::ensure_table`] (create the table if it
    /// is missing, wait until ACTIVE, enable TTL). For local servers only: production tables
    /// come from `template.yaml` and the function's role may not create tables.
    /// [`DynamoStore::from_client`] ignores it (call `ensure_table` yourself).
    pub create_table_if_missing: bool,
}

impl Default for DynamoOptions {
    fn default() -> Self {
        DynamoOptions {
            retention_days: None,
            deadline: Duration::from_secs(5),
            create_table_if_missing: false,
        }
    }
}

impl DynamoOptions {
    fn retention_secs(&self) -> Option<i64> {
        self.retention_days
            .filter(|d| *d > 0)
            .map(|d| i64::from(d) * 86_400)
    }
}

/// Applies the timeouts and retries derived from `opts` to a DynamoDB client configuration:
/// connect timeout ≤ 1 s, per-attempt timeout a third of the deadline (at least 200 ms),
/// operation timeout = the deadline, standard retries (up to 5 attempts, 25 ms–1 s jittered
/// backoff) that the deadline cuts short.
pub fn client_config(
    base: aws_sdk_dynamodb::config::Builder,
    opts: &DynamoOptions,
) -> aws_sdk_dynamodb::Config {
    let deadline = opts.deadline.max(Duration::from_millis(100));
    let attempt = (deadline / 3).max(Duration::from_millis(200)).min(deadline);
    base.timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(deadline.min(Duration::from_secs(1)))
            .operation_attempt_timeout(attempt)
            .operation_timeout(deadline)
            .build(),
    )
    .retry_config(
        RetryConfig::standard()
            .with_max_attempts(5)
            .with_initial_backoff(Duration::from_millis(25))
            .with_max_backoff((deadline / 4).min(Duration::from_secs(1))),
    )
    .build()
}

pub struct DynamoStore {
    client: Client,
    table: String,
    opts: DynamoOptions,
}

/// Opens the store on `table` with the default AWS configuration: region, credentials and
/// endpoint (`AWS_ENDPOINT_URL_DYNAMODB`) from the environment/profile. Makes no network call
/// (credentials are resolved on first use) as long as the region comes from the environment,
/// as on Lambda; without one, the default chain asks the instance metadata service. With
/// [`DynamoOptions::create_table_if_missing`] it also runs [`DynamoStore::ensure_table`].
pub async fn connect(table: &str, opts: DynamoOptions) -> Result<DynamoStore, StoreError> {
    connect_with(aws_config::defaults(BehaviorVersion::latest()), table, opts).await
}

/// [`connect`] with a caller-made loader (e.g. an explicit endpoint, region and credentials).
pub async fn connect_with(
    loader: aws_config::ConfigLoader,
    table: &str,
    opts: DynamoOptions,
) -> Result<DynamoStore, StoreError> {
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(StoreError::Failed(
            "dynamodb: no AWS region configured (set AWS_REGION)".into(),
        ));
    }
    let store = DynamoStore::from_client(Client::new(&shared), table, opts);
    if store.opts.create_table_if_missing {
        store.ensure_table().await?;
    }
    Ok(store)
}

impl DynamoStore {
    /// Wraps an existing client; its timeouts and retries are replaced by those of `opts`
    /// (see [`client_config`]), everything else (endpoint, region, credentials) is kept.
    pub fn from_client(client: Client, table: &str, opts: DynamoOptions) -> DynamoStore {
        let client = Client::from_conf(client_config(client.config().to_builder(), &opts));
        DynamoStore {
            client,
            table: table.to_string(),
            opts,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (on-demand, `pk`/`sk` strings, the `outbox` index) unless it exists,
    /// waits until table and index are ACTIVE, and enables TTL on `ttl`. For local setups and
    /// tests: production tables come from `template.yaml`, and the function's role may not create
    /// tables. An existing table without the `outbox` index is an error (recreate it, or add the
    /// index as `template.yaml` does). Servers without `UpdateTimeToLive` (dynalite) are
    /// tolerated: the items carry `ttl` anyway.
    pub async fn ensure_table(&self) -> Result<(), StoreError> {
        let exists = match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                false
            }
            Err(e) => return Err(sdk_error("DescribeTable", e)),
        };
        if !exists {
            let key = |name: &str, kt: KeyType| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kt)
                    .build()
                    .map_err(build_error)
            };
            let attr = |name: &str, t: ScalarAttributeType| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(t)
                    .build()
                    .map_err(build_error)
            };
            let outbox = GlobalSecondaryIndex::builder()
                .index_name(OUTBOX_INDEX)
                .key_schema(key("ob", KeyType::Hash)?)
                .key_schema(key("obDue", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(build_error)?;
            let created = self
                .client
                .create_table()
                .table_name(&self.table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
                .attribute_definitions(attr("sk", ScalarAttributeType::S)?)
                .attribute_definitions(attr("ob", ScalarAttributeType::S)?)
                .attribute_definitions(attr("obDue", ScalarAttributeType::N)?)
                .key_schema(key("pk", KeyType::Hash)?)
                .key_schema(key("sk", KeyType::Range)?)
                .global_secondary_indexes(outbox)
                .send()
                .await;
            match created {
                Ok(_) => tracing::info!(table = %self.table, "created the DynamoDB table"),
                // Created concurrently by someone else: fine, wait for it below.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_in_use_exception()) => {}
                Err(e) => return Err(sdk_error("CreateTable", e)),
            }
        }
        self.wait_active(Duration::from_secs(120)).await?;
        self.ensure_ttl().await
    }

    /// Waits until the table and its `outbox` index are ACTIVE (a server that reports no index
    /// status counts as ACTIVE).
    async fn wait_active(&self, max: Duration) -> Result<(), StoreError> {
        let start = tokio::time::Instant::now();
        loop {
            let (table, index) = self.table_status().await?;
            let index = index.ok_or_else(|| {
                StoreError::Failed(format!(
                    "dynamodb table {} has no {OUTBOX_INDEX:?} index (hash ob S, range obDue N, \
                     projection ALL): recreate the table or add the index as template.yaml does",
                    self.table
                ))
            })?;
            let index_active = index.as_ref().is_none_or(|s| *s == IndexStatus::Active);
            if table == TableStatus::Active && index_active {
                return Ok(());
            }
            if start.elapsed() > max {
                return Err(StoreError::Unavailable(format!(
                    "dynamodb table {} still {} (index {}) after {max:?}",
                    self.table,
                    table.as_str(),
                    index.as_ref().map_or("without a status", |s| s.as_str()),
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ensure_ttl(&self) -> Result<(), StoreError> {
        match self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(out) => {
                let d = out.time_to_live_description();
                let on = d.and_then(|d| d.time_to_live_status()).is_some_and(|s| {
                    matches!(s, TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
                });
                if on && d.and_then(|d| d.attribute_name()) == Some(TTL_ATTRIBUTE) {
                    return Ok(());
                }
            }
            Err(e) if is_unknown_operation(&e) => {}
            Err(e) => return Err(sdk_error("DescribeTimeToLive", e)),
        }
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(TTL_ATTRIBUTE)
            .build()
            .map_err(build_error)?;
        match self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_unknown_operation(&e) => {
                tracing::debug!(table = %self.table, "UpdateTimeToLive not supported by this server; items keep their ttl attribute");
                Ok(())
            }
            // AWS answers ValidationException when TTL is already enabled (e.g. concurrently).
            Err(e)
                if e.as_service_error()
                    .and_then(|s| s.message())
                    .is_some_and(|m| m.contains("already enabled")) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error("UpdateTimeToLive", e)),
        }
    }

    /// The table's status, and its `outbox` index's: `None` without the index, `Some(None)` when
    /// the server reports no status for it.
    async fn table_status(&self) -> Result<(TableStatus, Option<Option<IndexStatus>>), StoreError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeTable", e))?;
        let table = out.table();
        let status = table
            .and_then(|t| t.table_status())
            .cloned()
            .ok_or_else(|| {
                StoreError::Failed(format!(
                    "dynamodb DescribeTable: no status for {}",
                    self.table
                ))
            })?;
        let index = table
            .map(|t| t.global_secondary_indexes())
            .unwrap_or_default()
            .iter()
            .find(|i| i.index_name() == Some(OUTBOX_INDEX))
            .map(|i| i.index_status().cloned());
        Ok((status, index))
    }

    /// Bounds a store call (which may make several SDK calls) by [`DynamoOptions::deadline`].
    async fn bounded<T>(
        &self,
        op: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let deadline = self.opts.deadline.max(Duration::from_millis(100));
        tokio::time::timeout(deadline, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "dynamodb {op}: timed out after {deadline:?} (the store's deadline)"
                )))
            })
    }

    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        Ok(out.item)
    }

    /// `PutItem` unless an item with that key exists: false when it did (nothing written).
    async fn put_new(&self, item: Item) -> Result<bool, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("PutItem", e)),
        }
    }

    /// `UpdateItem` of an existing item; false when `condition` did not hold (nothing written).
    async fn update_existing(
        &self,
        (pk, sk): (String, String),
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, StoreError> {
        let mut u = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression(update)
            .condition_expression(condition);
        for (k, v) in values {
            u = u.expression_attribute_values(k, v);
        }
        match u.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("UpdateItem", e)),
        }
    }

    async fn append_now(&self, m: NewMessage, b: Broadcast) -> Result<Appended, StoreError> {
        let id = m.id();
        if self.put_new(message_claim_item(&m, &id, now_ms())).await? {
            let b = message_broadcast(b, &m, &id);
            return self.put_message(m, id, b).await;
        }
        // Claimed before: by a retried delivery (whose ce-time may differ), or by one racing us.
        let claim = self
            .get(message_claim_pk(&m.connection_id), &m.ce_id)
            .await?
            .ok_or_else(|| {
                StoreError::Failed(format!(
                    "dynamodb: the claim of delivery {:?} exists but could not be read back",
                    m.ce_id
                ))
            })?;
        let (claimed_id, room, at_ms) = claimed_message(&claim)?;
        if let Some(item) = self.get(room_pk(&room), &claimed_id).await? {
            return existing(&item, &m);
        }
        // The claim without its message: the first delivery stopped between its two writes (or
        // is between them now). Complete it as claimed; the conditional put settles a race.
        let m = NewMessage { room, at_ms, ..m };
        let b = message_broadcast(b, &m, &claimed_id);
        self.put_message(m, claimed_id, b).await
    }

    /// Puts a message with its pending broadcast (one item) unless it is there already.
    async fn put_message(
        &self,
        m: NewMessage,
        id: String,
        b: Broadcast,
    ) -> Result<Appended, StoreError> {
        let mut item = message_item(&m, &id, self.opts.retention_secs());
        item.extend(outbox_attributes(&b));
        if self.put_new(item).await? {
            let mut message = StoredMessage::from_new(&m);
            message.id = id;
            return Ok(Appended {
                message,
                inserted: true,
                pending: Some(b),
            });
        }
        match self.get(room_pk(&m.room), &id).await? {
            Some(item) => existing(&item, &m),
            None => Err(StoreError::Failed(format!(
                "message {id} exists but could not be read back"
            ))),
        }
    }

    async fn record_notice_now(&self, b: Broadcast) -> Result<Recorded, StoreError> {
        if self.put_new(notice_claim_item(&b, now_ms())).await? {
            return Ok(Recorded {
                inserted: true,
                pending: Some(b),
            });
        }
        let claim = self
            .get(delivery_pk(&b.connection_id), &b.ce_id)
            .await?
            .ok_or_else(|| {
                StoreError::Failed(format!(
                    "dynamodb: the claim of delivery {:?} exists but could not be read back",
                    b.ce_id
                ))
            })?;
        Ok(Recorded {
            inserted: false,
            pending: item_to_broadcast(&claim)?,
        })
    }

    async fn due_now(&self, now_ms: i64, limit: usize) -> Result<Vec<Broadcast>, StoreError> {
        let mut due = Vec::new();
        let mut start_key: Option<Item> = None;
        while due.len() < limit {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(OUTBOX_INDEX)
                .key_condition_expression("ob = :p AND obDue <= :now")
                .expression_attribute_values(":p", s(PENDING))
                .expression_attribute_values(":now", n(now_ms))
                .scan_index_forward(true)
                .limit((limit - due.len()).min(i32::MAX as usize) as i32)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| sdk_error("Query", e))?;
            for item in out.items() {
                due.extend(item_to_broadcast(item)?);
            }
            match out.last_evaluated_key {
                Some(k) => start_key = Some(k),
                None => break,
            }
        }
        due.truncate(limit);
        Ok(due)
    }

    async fn backlog_now(&self) -> Result<Backlog, StoreError> {
        let mut backlog = Backlog::default();
        let mut start_key: Option<Item> = None;
        loop {
            let left = BACKLOG_SCAN_LIMIT - backlog.pending;
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(OUTBOX_INDEX)
                .key_condition_expression("ob = :p")
                .expression_attribute_values(":p", s(PENDING))
                .projection_expression("obCreated")
                .limit(left.min(1_000) as i32)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| sdk_error("Query", e))?;
            for item in out.items() {
                backlog.pending += 1;
                if let Some(created) = number(item, "obCreated") {
                    backlog.oldest_ms = Some(backlog.oldest_ms.map_or(created, |o| o.min(created)));
                }
            }
            match out.last_evaluated_key {
                Some(k) if backlog.pending < BACKLOG_SCAN_LIMIT => start_key = Some(k),
                Some(_) => {
                    tracing::debug!(
                        "outbox backlog: counted the first {BACKLOG_SCAN_LIMIT} broadcasts only"
                    );
                    break;
                }
                None => break,
            }
        }
        Ok(backlog)
    }
}

/// Where a broadcast lives: the message item, or the notice's claim item.
fn broadcast_key(b: &Broadcast) -> (String, String) {
    match b.kind {
        BroadcastKind::Message => (room_pk(&b.room), b.id.clone()),
        BroadcastKind::Notice => (delivery_pk(&b.connection_id), b.ce_id.clone()),
    }
}

/// The answer to a delivery whose message is stored: the message, and its broadcast if unsent.
fn existing(item: &Item, m: &NewMessage) -> Result<Appended, StoreError> {
    let message = item_to_message(item)?;
    let same = message.connection_id == m.connection_id
        && matches!(item.get("ceId"), Some(AttributeValue::S(c)) if *c == m.ce_id);
    if !same {
        return Err(StoreError::Failed(format!(
            "message id {} collides with another delivery",
            message.id
        )));
    }
    Ok(Appended {
        message,
        inserted: false,
        pending: item_to_broadcast(item)?,
    })
}

/// The broadcast of message `m` stored as `id`: the given one, tied to the message (its id,
/// room and delivery). When the id differs from the one the payload was built with (a retry
/// completing a claim made with another `ce-time`), the payload's `"id"` and `"at"` are
/// rewritten to the stored message's.
fn message_broadcast(b: Broadcast, m: &NewMessage, id: &str) -> Broadcast {
    let payload = if b.id == id {
        b.payload
    } else {
        with_id_and_time(b.payload, id, &format_ms(m.at_ms))
    };
    Broadcast {
        id: id.to_string(),
        kind: BroadcastKind::Message,
        room: m.room.clone(),
        payload,
        connection_id: m.connection_id.clone(),
        ce_id: m.ce_id.clone(),
        ..b
    }
}

/// Sets `"id"` (and `"at"`, where the payload has one) of a JSON object payload; anything else
/// is kept as it is.
fn with_id_and_time(payload: String, id: &str, at: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(&payload) {
        Ok(serde_json::Value::Object(mut o)) => {
            o.insert("id".into(), id.into());
            if let Some(v) = o.get_mut("at") {
                *v = at.into();
            }
            serde_json::Value::Object(o).to_string()
        }
        _ => {
            tracing::warn!(id, "outbox payload is not a JSON object; sent as built");
            payload
        }
    }
}

fn room_pk(room: &str) -> String {
    format!("room#{room}")
}

fn presence_pk(room: &str) -> String {
    format!("presence#{room}")
}

fn delivery_pk(connection_id: &str) -> String {
    format!("delivery#{connection_id}")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Epoch seconds at which an item written for an event at `at_ms` expires.
fn expiry(at_ms: i64, retention_secs: i64) -> i64 {
    at_ms.div_euclid(1000).saturating_add(retention_secs)
}

fn message_item(m: &NewMessage, id: &str, retention_secs: Option<i64>) -> Item {
    let mut item = Item::from([
        ("pk".to_string(), s(room_pk(&m.room))),
        ("sk".to_string(), s(id)),
        ("room".to_string(), s(&m.room)),
        ("connectionId".to_string(), s(&m.connection_id)),
        ("ceId".to_string(), s(&m.ce_id)),
        ("text".to_string(), s(&m.text)),
        ("atMs".to_string(), n(m.at_ms)),
    ]);
    if let Some(u) = &m.user_id {
        item.insert("userId".into(), s(u));
    }
    if let Some(r) = retention_secs {
        item.insert(TTL_ATTRIBUTE.into(), n(expiry(m.at_ms, r)));
    }
    item
}

fn message_claim_pk(connection_id: &str) -> String {
    format!("message-delivery#{connection_id}")
}

/// The claim of a message delivery: names the message it stores (id, room and event time).
fn message_claim_item(m: &NewMessage, id: &str, now_ms: i64) -> Item {
    Item::from([
        ("pk".to_string(), s(message_claim_pk(&m.connection_id))),
        ("sk".to_string(), s(&m.ce_id)),
        ("messageId".to_string(), s(id)),
        ("room".to_string(), s(&m.room)),
        ("messageAtMs".to_string(), n(m.at_ms)),
        ("atMs".to_string(), n(now_ms)),
        (TTL_ATTRIBUTE.to_string(), n(expiry(now_ms, CLAIM_TTL_SECS))),
    ])
}

/// The message a claim names: id, room, event time.
fn claimed_message(claim: &Item) -> Result<(String, String, i64), StoreError> {
    let bad = |k: &str| StoreError::Failed(format!("dynamodb: malformed message claim: {k}"));
    let id = string(claim, "messageId").ok_or_else(|| bad("messageId"))?;
    let room = string(claim, "room").ok_or_else(|| bad("room"))?;
    let at_ms = number(claim, "messageAtMs").ok_or_else(|| bad("messageAtMs"))?;
    Ok((id, room, at_ms))
}

/// The claim of a notice delivery, carrying the notice's pending broadcast.
fn notice_claim_item(b: &Broadcast, now_ms: i64) -> Item {
    let mut item = Item::from([
        ("pk".to_string(), s(delivery_pk(&b.connection_id))),
        ("sk".to_string(), s(&b.ce_id)),
        ("room".to_string(), s(&b.room)),
        ("connectionId".to_string(), s(&b.connection_id)),
        ("ceId".to_string(), s(&b.ce_id)),
        ("atMs".to_string(), n(now_ms)),
        (TTL_ATTRIBUTE.to_string(), n(expiry(now_ms, CLAIM_TTL_SECS))),
    ]);
    item.extend(outbox_attributes(b));
    item
}

/// A pending broadcast's attributes (`room`, `connectionId` and `ceId` are the item's own).
fn outbox_attributes(b: &Broadcast) -> Item {
    Item::from([
        ("ob".to_string(), s(PENDING)),
        ("obDue".to_string(), n(b.due_ms)),
        ("obId".to_string(), s(&b.id)),
        ("obKind".to_string(), s(kind_name(b.kind))),
        ("obPayload".to_string(), s(&b.payload)),
        ("obCreated".to_string(), n(b.created_ms)),
        ("obAttempts".to_string(), n(i64::from(b.attempts))),
    ])
}

fn kind_name(k: BroadcastKind) -> &'static str {
    match k {
        BroadcastKind::Message => "message",
        BroadcastKind::Notice => "notice",
    }
}

/// The item's pending broadcast; `None` once it was sent (no `ob`).
fn item_to_broadcast(item: &Item) -> Result<Option<Broadcast>, StoreError> {
    if !item.contains_key("ob") {
        return Ok(None);
    }
    let bad = |k: &str| StoreError::Failed(format!("dynamodb: malformed pending broadcast: {k}"));
    let text = |k: &str| string(item, k).ok_or_else(|| bad(k));
    let num = |k: &str| number(item, k).ok_or_else(|| bad(k));
    let kind = match text("obKind")?.as_str() {
        "message" => BroadcastKind::Message,
        "notice" => BroadcastKind::Notice,
        _ => return Err(bad("obKind")),
    };
    Ok(Some(Broadcast {
        id: text("obId")?,
        kind,
        room: text("room")?,
        payload: text("obPayload")?,
        connection_id: text("connectionId")?,
        ce_id: text("ceId")?,
        created_ms: num("obCreated")?,
        due_ms: num("obDue")?,
        attempts: u32::try_from(num("obAttempts")?).map_err(|_| bad("obAttempts"))?,
    }))
}

fn string(item: &Item, k: &str) -> Option<String> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn number(item: &Item, k: &str) -> Option<i64> {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

fn item_to_message(item: &Item) -> Result<StoredMessage, StoreError> {
    let text = |k: &str| -> Result<String, StoreError> {
        match item.get(k) {
            Some(AttributeValue::S(v)) => Ok(v.clone()),
            _ => Err(StoreError::Failed(format!(
                "dynamodb: malformed message item: no string {k}"
            ))),
        }
    };
    let from = match item.get("userId") {
        None | Some(AttributeValue::Null(_)) => None,
        Some(AttributeValue::S(v)) => Some(v.clone()),
        Some(_) => {
            return Err(StoreError::Failed(
                "dynamodb: malformed message item: userId".into(),
            ))
        }
    };
    let at_ms = match item.get("atMs") {
        Some(AttributeValue::N(v)) => v.parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| StoreError::Failed("dynamodb: malformed message item: atMs".into()))?;
    Ok(StoredMessage {
        id: text("sk")?,
        room: text("room")?,
        from,
        connection_id: text("connectionId")?,
        text: text("text")?,
        at: format_ms(at_ms),
    })
}

/// Error codes that mean "too much load, or a server-side hiccup: come back later".
fn is_transient(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "Throttling"
            | "ThrottledException"
            | "TooManyRequestsException"
            | "LimitExceededException"
            | "InternalServerError"
            | "ServiceUnavailable"
    )
}

fn is_unknown_operation<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error().and_then(|s| s.code()) == Some("UnknownOperationException")
}

fn clip(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// Maps an SDK error to a [`StoreError`] whose reason is the operation, what went wrong (an
/// error code, or the kind of transport failure) and the request id: never the endpoint, the
/// SDK's debug text, request contents or credentials.
fn sdk_error<E>(op: &str, e: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let request_id = |reason: String, id: Option<&str>| match id {
        Some(id) => format!("{reason} (request id {})", one_line(id, 100)),
        None => reason,
    };
    match &e {
        SdkError::TimeoutError(_) => {
            StoreError::Unavailable(format!("dynamodb {op}: request timed out"))
        }
        SdkError::DispatchFailure(d) => {
            let cause = if d.is_timeout() {
                "timed out connecting".to_string()
            } else if d.is_io() {
                match io_kind(&e) {
                    Some(kind) => format!("cannot connect: {kind}"),
                    None => "cannot connect: I/O error".into(),
                }
            } else if d.is_user() {
                "request could not be sent (configuration)".into()
            } else {
                "request could not be sent".into()
            };
            StoreError::Unavailable(format!("dynamodb {op}: {cause}"))
        }
        SdkError::ResponseError(r) => {
            let id = r
                .raw()
                .headers()
                .get("x-amzn-requestid")
                .map(str::to_string);
            StoreError::Unavailable(request_id(
                format!(
                    "dynamodb {op}: unreadable response (HTTP {})",
                    r.raw().status().as_u16()
                ),
                id.as_deref(),
            ))
        }
        SdkError::ServiceError(se) => {
            // Code, message and request id of the modeled error; not the raw response.
            let err = se.err();
            let status = se.raw().status();
            let mut reason = match err.code() {
                Some(code) => format!("dynamodb {op}: {}", one_line(code, 100)),
                None => format!(
                    "dynamodb {op}: HTTP {} without an error code",
                    status.as_u16()
                ),
            };
            if let Some(m) = err.message() {
                reason = format!("{reason}: {}", one_line(m, 300));
            }
            let reason = request_id(reason, err.meta().extra("aws_request_id"));
            // 5xx without a known code: e.g. a proxy in front of the endpoint.
            if err.code().is_some_and(is_transient) || status.is_server_error() {
                StoreError::Unavailable(clip(reason))
            } else {
                StoreError::Failed(clip(reason))
            }
        }
        SdkError::ConstructionFailure(_) => {
            StoreError::Failed(format!("dynamodb {op}: request could not be built"))
        }
        _ => StoreError::Failed(format!("dynamodb {op}: unexpected SDK error")),
    }
}

/// The kind of the I/O error under a transport failure ("connection refused"), if there is one.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// Text from a server, on one line and bounded.
fn one_line(s: &str, max: usize) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut line = line.trim().to_string();
    if line.len() > max {
        let mut end = max;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Failed(format!("dynamodb: cannot build request: {e}"))
}

#[async_trait::async_trait]
impl MessageStore for DynamoStore {
    async fn append(&self, m: NewMessage, b: Broadcast) -> Result<Appended, StoreError> {
        self.bounded("append", self.append_now(m, b)).await
    }

    async fn record_notice(&self, b: Broadcast) -> Result<Recorded, StoreError> {
        self.bounded("record_notice", self.record_notice_now(b))
            .await
    }

    /// Removes the broadcast's attributes from its item (which leaves the `outbox` index). An
    /// item that is gone already (expired) is not recreated.
    async fn broadcast_sent(&self, b: &Broadcast) -> Result<(), StoreError> {
        let removed = self.update_existing(
            broadcast_key(b),
            REMOVE_BROADCAST,
            "attribute_exists(pk)",
            vec![],
        );
        self.bounded("broadcast_sent", removed).await.map(drop)
    }

    /// Counts the attempt and moves the broadcast's due time, if it is still unsent.
    async fn broadcast_failed(&self, b: &Broadcast, retry_at_ms: i64) -> Result<(), StoreError> {
        let pushed = self.update_existing(
            broadcast_key(b),
            "SET obDue = :t, obAttempts = obAttempts + :one",
            "attribute_exists(ob)",
            vec![(":t", n(retry_at_ms)), (":one", n(1))],
        );
        self.bounded("broadcast_failed", pushed).await.map(drop)
    }

    /// A `Query` on the `outbox` index (eventually consistent on AWS), oldest due first.
    async fn due_broadcasts(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Broadcast>, StoreError> {
        self.bounded("due_broadcasts", self.due_now(now_ms, limit))
            .await
    }

    /// Counts the `outbox` index's entries (projected to `obCreated`), with the oldest creation
    /// time among them. Exact up to [`BACKLOG_SCAN_LIMIT`] pending broadcasts; beyond that, the
    /// count stops there and the oldest is that of the first ones by due time.
    async fn backlog(&self) -> Result<Backlog, StoreError> {
        self.bounded("backlog", self.backlog_now()).await
    }

    /// Consistent reads, so a message is in the history as soon as its append returned.
    async fn history(
        &self,
        room: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Page, StoreError> {
        let page = PageRequest::new(limit, before)?;
        let mut messages = Vec::with_capacity(page.fetch());
        let mut start_key: Option<Item> = None;
        // One extra item tells whether an older page exists. A query page stops at 1 MB, so
        // large messages may need more than one request.
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .scan_index_forward(false)
                .limit((page.fetch() - messages.len()) as i32)
                .expression_attribute_values(":pk", s(room_pk(room)))
                .set_exclusive_start_key(start_key.take());
            q = match &page.before {
                Some(b) => q
                    .key_condition_expression("pk = :pk AND sk < :before")
                    .expression_attribute_values(":before", s(b)),
                None => q.key_condition_expression("pk = :pk"),
            };
            let out = q.send().await.map_err(|e| sdk_error("Query", e))?;
            for item in out.items() {
                messages.push(item_to_message(item)?);
            }
            match out.last_evaluated_key() {
                Some(k) if messages.len() < page.fetch() => start_key = Some(k.clone()),
                _ => break,
            }
        }
        Ok(page.page(messages))
    }

    async fn presence_online(&self, o: &Online) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(presence_pk(&o.room)))
            .key("sk", s(&o.connection_id))
            .update_expression(
                "SET userId = :u, expiresMs = :e, #ttl = :t, sinceMs = if_not_exists(sinceMs, :s)",
            )
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":u", s(&o.user_id))
            .expression_attribute_values(":e", n(o.expires_ms))
            .expression_attribute_values(":t", n(o.expires_ms.div_euclid(1000) + 1))
            .expression_attribute_values(":s", n(o.since_ms))
            .send();
        let update = async {
            update
                .await
                .map(drop)
                .map_err(|e| sdk_error("UpdateItem", e))
        };
        self.bounded("presence_online", update).await
    }

    async fn presence_offline(&self, room: &str, connection_id: &str) -> Result<(), StoreError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(presence_pk(room)))
            .key("sk", s(connection_id))
            .send();
        let delete = async {
            delete
                .await
                .map(drop)
                .map_err(|e| sdk_error("DeleteItem", e))
        };
        self.bounded("presence_offline", delete).await
    }

    /// One consistent `Query` of the room's presence partition (paged), expired entries
    /// filtered out (the TTL deletes them late).
    async fn presence(&self, room: &str, now_ms: i64) -> Result<Vec<PresentUser>, StoreError> {
        let query = async {
            let mut rows = Vec::new();
            let mut start_key: Option<Item> = None;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .consistent_read(true)
                    .key_condition_expression("pk = :pk")
                    .filter_expression("expiresMs > :now")
                    .expression_attribute_values(":pk", s(presence_pk(room)))
                    .expression_attribute_values(":now", n(now_ms))
                    .set_exclusive_start_key(start_key.take())
                    .send()
                    .await
                    .map_err(|e| sdk_error("Query", e))?;
                for item in out.items() {
                    match (string(item, "userId"), number(item, "sinceMs")) {
                        (Some(u), Some(since)) => rows.push((u, since)),
                        _ => {
                            return Err(StoreError::Failed(
                                "dynamodb: a presence item without userId or sinceMs".into(),
                            ))
                        }
                    }
                }
                match out.last_evaluated_key() {
                    Some(k) => start_key = Some(k.clone()),
                    None => break,
                }
            }
            Ok(PresentUser::group(rows))
        };
        self.bounded("presence", query).await
    }

    /// A real write: `PutItem` of the probe item (expiring after an hour), so a table that
    /// cannot take writes (missing, throttled, no permission) shows here.
    async fn health(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let probe = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s("health#probe"))
            .item("sk", s("probe"))
            .item("atMs", n(now))
            .item(TTL_ATTRIBUTE, n(expiry(now, PROBE_TTL_SECS)))
            .send();
        let probe = async { probe.await.map(drop).map_err(|e| sdk_error("PutItem", e)) };
        self.bounded("health", probe).await
    }

    fn describe(&self) -> String {
        format!("dynamodb://{}", self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(user: Option<&str>) -> NewMessage {
        NewMessage {
            room: "lobby".into(),
            connection_id: "conn-1".into(),
            ce_id: "ce-7".into(),
            user_id: user.map(String::from),
            text: "héllo".into(),
            at_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn message_items_round_trip() {
        for user in [Some("alice"), None] {
            let m = msg(user);
            let item = message_item(&m, &m.id(), None);
            assert_eq!(item["pk"], s("room#lobby"));
            assert_eq!(item["sk"], s(m.id()));
            assert_eq!(item["ceId"], s("ce-7"));
            assert_eq!(item["atMs"], AttributeValue::N("1700000000123".into()));
            assert_eq!(item.contains_key("userId"), user.is_some());
            assert!(!item.contains_key(TTL_ATTRIBUTE));
            assert_eq!(item_to_message(&item).unwrap(), StoredMessage::from_new(&m));
        }
    }

    #[test]
    fn malformed_items_are_errors() {
        let m = msg(Some("alice"));
        for (k, v) in [("atMs", s("soon")), ("text", n(1)), ("userId", n(1))] {
            let mut item = message_item(&m, &m.id(), None);
            item.insert(k.into(), v);
            assert!(
                matches!(item_to_message(&item), Err(StoreError::Failed(_))),
                "{k}"
            );
        }
        let mut item = message_item(&m, &m.id(), None);
        item.remove("room");
        assert!(matches!(item_to_message(&item), Err(StoreError::Failed(_))));
    }

    #[test]
    fn ttl_follows_the_event_time_and_the_retention() {
        let m = msg(None);
        let opts = DynamoOptions {
            retention_days: Some(30),
            ..Default::default()
        };
        let item = message_item(&m, &m.id(), opts.retention_secs());
        assert_eq!(item[TTL_ATTRIBUTE], n(1_700_000_000 + 30 * 86_400));
        assert_eq!(
            DynamoOptions {
                retention_days: Some(0),
                ..Default::default()
            }
            .retention_secs(),
            None
        );
        assert_eq!(DynamoOptions::default().retention_secs(), None);
        assert_eq!(expiry(-1, 10), 9); // floor, not truncation toward zero

        let m = msg(None);
        let claim = message_claim_item(&m, &m.id(), 1_700_000_000_999);
        assert_eq!(claim["pk"], s("message-delivery#conn-1"));
        assert_eq!(claim["sk"], s("ce-7"));
        assert_eq!(claim[TTL_ATTRIBUTE], n(1_700_000_000 + 86_400));
        assert_eq!(
            claimed_message(&claim).unwrap(),
            (m.id(), "lobby".to_string(), m.at_ms)
        );
        let notice = notice_claim_item(&broadcast(BroadcastKind::Notice), 1_700_000_000_999);
        assert_eq!(notice["pk"], s("delivery#conn-1"));
        assert_eq!(notice["sk"], s("ce-7"));
        assert_eq!(notice[TTL_ATTRIBUTE], n(1_700_000_000 + 86_400));
    }

    fn broadcast(kind: BroadcastKind) -> Broadcast {
        let m = msg(Some("alice"));
        Broadcast {
            id: m.id(),
            kind,
            room: m.room.clone(),
            payload: format!(
                r#"{{"type":"message","id":"{}","at":"then","text":"x"}}"#,
                m.id()
            ),
            connection_id: m.connection_id.clone(),
            ce_id: m.ce_id.clone(),
            created_ms: 1_700_000_000_500,
            due_ms: 1_700_000_015_500,
            attempts: 3,
        }
    }

    #[test]
    fn pending_broadcasts_round_trip_on_their_items() {
        let m = msg(Some("alice"));
        for kind in [BroadcastKind::Message, BroadcastKind::Notice] {
            let b = broadcast(kind);
            let mut item = match kind {
                BroadcastKind::Message => message_item(&m, &m.id(), None),
                BroadcastKind::Notice => notice_claim_item(&b, 1),
            };
            assert_eq!(
                item_to_broadcast(&item).unwrap().is_some(),
                kind == BroadcastKind::Notice
            );
            item.extend(outbox_attributes(&b));
            assert_eq!(item["ob"], s("pending"));
            assert_eq!(item_to_broadcast(&item).unwrap(), Some(b.clone()));
            assert_eq!(
                broadcast_key(&b),
                (
                    item["pk"].as_s().unwrap().clone(),
                    item["sk"].as_s().unwrap().clone()
                )
            );
            // What REMOVE takes away is exactly what marks it pending.
            let removed: Vec<&str> = REMOVE_BROADCAST
                .trim_start_matches("REMOVE ")
                .split(", ")
                .collect();
            let mut attrs: Vec<String> = outbox_attributes(&b).into_keys().collect();
            attrs.sort();
            let mut removed_sorted = removed.clone();
            removed_sorted.sort();
            assert_eq!(attrs, removed_sorted);
            for k in removed {
                item.remove(k);
            }
            assert_eq!(item_to_broadcast(&item).unwrap(), None);
            item.extend(outbox_attributes(&b));
            item.insert("obKind".into(), s("other"));
            assert!(item_to_broadcast(&item).is_err());
        }
    }

    #[test]
    fn a_completed_claim_rewrites_the_payload_to_the_claimed_id() {
        let m = msg(Some("alice"));
        let b = broadcast(BroadcastKind::Message);
        // The id it was built with: kept as it is.
        assert_eq!(message_broadcast(b.clone(), &m, &m.id()), b);
        // Another id (the claim's, from the first delivery's time).
        let first = NewMessage {
            at_ms: m.at_ms - 60_000,
            ..m.clone()
        };
        let rebuilt = message_broadcast(b.clone(), &first, &first.id());
        assert_eq!(rebuilt.id, first.id());
        let payload: serde_json::Value = serde_json::from_str(&rebuilt.payload).unwrap();
        assert_eq!(payload["id"], first.id().as_str());
        assert_eq!(payload["at"], format_ms(first.at_ms).as_str());
        assert_eq!(payload["text"], "x");
        assert_eq!(
            (rebuilt.created_ms, rebuilt.due_ms, rebuilt.attempts),
            (b.created_ms, b.due_ms, b.attempts)
        );
        // Keys keep their order; a payload without "at" gets none; a non-object is kept.
        assert_eq!(
            with_id_and_time(r#"{"type":"m","id":"old"}"#.into(), "new", "t"),
            r#"{"type":"m","id":"new"}"#
        );
        assert_eq!(with_id_and_time("[1]".into(), "new", "t"), "[1]");
    }

    #[test]
    fn throttling_codes_are_unavailable() {
        for c in [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
        ] {
            assert!(is_transient(c), "{c}");
        }
        for c in [
            "ValidationException",
            "ResourceNotFoundException",
            "AccessDeniedException",
        ] {
            assert!(!is_transient(c), "{c}");
        }
        assert_eq!(clip("x".repeat(2000)).chars().count(), MAX_REASON + 1);
        assert_eq!(clip("é".repeat(400)).len(), MAX_REASON + '…'.len_utf8());
    }

    #[test]
    fn client_config_bounds_every_call() {
        let opts = DynamoOptions {
            deadline: Duration::from_secs(3),
            ..Default::default()
        };
        let conf = client_config(aws_sdk_dynamodb::Config::builder(), &opts);
        let t = conf.timeout_config().unwrap();
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(1)));
        assert_eq!(t.operation_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(1)));
        let r = conf.retry_config().unwrap();
        assert_eq!(r.max_attempts(), 5);
        assert_eq!(DynamoOptions::default().deadline, Duration::from_secs(5));
        assert!(!DynamoOptions::default().create_table_if_missing);
    }
}
