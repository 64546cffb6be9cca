//! The DynamoDB store: one table, partition key `pk` (S) and sort key `sk` (S), on-demand billing
//! (`template.yaml` defines it for production; [`DynamoStore::ensure_table`] creates it locally).
//!
//! # Items
//!
//! | item | `pk` | `sk` | other attributes |
//! |---|---|---|---|
//! | message | `room#<room>` | [`NewMessage::id`] | `room`, `connectionId`, `ceId`, `userId` (absent when anonymous), `text`, `atMs` (N), `ttl` (N, only with a retention) |
//! | delivery claim | `delivery#<connectionId>` | `ce-id` | `atMs` (N, when claimed), `ttl` (N, one day after the claim) |
//!
//! A room is one partition, and the sort key starts with the 13-digit event time in ms, so
//! history is one `Query` newest-first (`ScanIndexForward=false`) with `sk < cursor` for older
//! pages — the same order and cursors as the SQLite store.
//!
//! # Why the put is conditional
//!
//! Web PubSub retries a webhook it got no answer for, with the same `ce-id` and `ce-time`. The
//! sort key is derived from exactly those (time + a hash of connection id and `ce-id`), so a retry
//! addresses the item its first delivery wrote. `PutItem` with `attribute_not_exists(pk)` makes
//! the write happen at most once even when two deliveries race; the loser gets
//! `ConditionalCheckFailedException`, reads the stored item (consistent read) and reports
//! `inserted: false` with the message as first stored, so the chat layer answers
//! "duplicate" and does not broadcast again. (SQLite also has a unique index on connection id +
//! `ce-id`; here the dedupe relies on the event time being part of the event — a delivery
//! without `ce-time`, stamped with the receive time, would get a new id on retry.)
//!
//! Delivery claims ([`MessageStore::claim_delivery`]) for events that store nothing (join/leave
//! notices) use the same conditional put on their own item. They only have to outlive the
//! retry window of Web PubSub (minutes), so they expire after a day through the table's TTL.
//!
//! # Failures
//!
//! Every call is bounded: connect timeout, per-attempt timeout, and an operation timeout equal to
//! [`DynamoOptions::deadline`] that also bounds the retries (standard mode: throttling,
//! timeouts, connection failures, 5xx). Without these the SDK waits forever on a server that
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
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;

use super::*;

type Item = HashMap<String, AttributeValue>;

/// Name of the expiry attribute (epoch seconds); the table's TTL must be enabled on it.
pub const TTL_ATTRIBUTE: &str = "ttl";
/// How long a delivery claim is kept: far beyond Web PubSub's retry window.
pub const CLAIM_TTL_SECS: i64 = 86_400;
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

    /// Creates the table (on-demand, `pk`/`sk` strings) unless it exists, waits until it is
    /// ACTIVE, and enables TTL on `ttl`. For local setups and tests: production tables come from
    /// `template.yaml`, and the function's role may not create tables. Servers without
    /// `UpdateTimeToLive` (dynalite) are tolerated: the items carry `ttl` anyway.
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
            };
            let attr = |name: &str| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
            };
            let created = self
                .client
                .create_table()
                .table_name(&self.table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attr("pk").map_err(build_error)?)
                .attribute_definitions(attr("sk").map_err(build_error)?)
                .key_schema(key("pk", KeyType::Hash).map_err(build_error)?)
                .key_schema(key("sk", KeyType::Range).map_err(build_error)?)
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

    async fn wait_active(&self, max: Duration) -> Result<(), StoreError> {
        let start = tokio::time::Instant::now();
        loop {
            let status = self.table_status().await?;
            if status == TableStatus::Active {
                return Ok(());
            }
            if start.elapsed() > max {
                return Err(StoreError::Unavailable(format!(
                    "dynamodb table {} still {} after {max:?}",
                    self.table,
                    status.as_str()
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

    async fn table_status(&self) -> Result<TableStatus, StoreError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeTable", e))?;
        out.table()
            .and_then(|t| t.table_status())
            .cloned()
            .ok_or_else(|| {
                StoreError::Failed(format!(
                    "dynamodb DescribeTable: no status for {}",
                    self.table
                ))
            })
    }

    async fn get_message(&self, room: &str, id: &str) -> Result<Option<StoredMessage>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(room_pk(room)))
            .key("sk", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        out.item().map(item_to_message).transpose()
    }
}

fn room_pk(room: &str) -> String {
    format!("room#{room}")
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

fn claim_item(connection_id: &str, ce_id: &str, now_ms: i64) -> Item {
    Item::from([
        ("pk".to_string(), s(delivery_pk(connection_id))),
        ("sk".to_string(), s(ce_id)),
        ("atMs".to_string(), n(now_ms)),
        (TTL_ATTRIBUTE.to_string(), n(expiry(now_ms, CLAIM_TTL_SECS))),
    ])
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
    async fn append(&self, m: NewMessage, _b: Broadcast) -> Result<Appended, StoreError> {
        let id = m.id();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(message_item(&m, &id, self.opts.retention_secs())))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(Appended {
                message: StoredMessage::from_new(&m),
                inserted: true,
                pending: None,
            }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                match self.get_message(&m.room, &id).await? {
                    Some(message) if message.connection_id == m.connection_id => Ok(Appended {
                        message,
                        inserted: false,
                        pending: None,
                    }),
                    Some(_) => Err(StoreError::Failed(format!(
                        "message id {id} collides with another delivery"
                    ))),
                    None => Err(StoreError::Failed(format!(
                        "message {id} exists but could not be read back"
                    ))),
                }
            }
            Err(e) => Err(sdk_error("PutItem", e)),
        }
    }

    async fn record_notice(&self, _b: Broadcast) -> Result<Recorded, StoreError> {
        Err(StoreError::Failed(
            "dynamodb outbox: not implemented yet".into(),
        ))
    }

    async fn broadcast_sent(&self, _b: &Broadcast) -> Result<(), StoreError> {
        Err(StoreError::Failed(
            "dynamodb outbox: not implemented yet".into(),
        ))
    }

    async fn broadcast_failed(&self, _b: &Broadcast, _retry_at_ms: i64) -> Result<(), StoreError> {
        Err(StoreError::Failed(
            "dynamodb outbox: not implemented yet".into(),
        ))
    }

    async fn due_broadcasts(
        &self,
        _now_ms: i64,
        _limit: usize,
    ) -> Result<Vec<Broadcast>, StoreError> {
        Err(StoreError::Failed(
            "dynamodb outbox: not implemented yet".into(),
        ))
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        Err(StoreError::Failed(
            "dynamodb outbox: not implemented yet".into(),
        ))
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

    /// The table answers DescribeTable and can serve requests (ACTIVE, or UPDATING, during
    /// which it still does).
    async fn health(&self) -> Result<(), StoreError> {
        match self.table_status().await? {
            TableStatus::Active | TableStatus::Updating => Ok(()),
            other => Err(StoreError::Unavailable(format!(
                "dynamodb table {} is {}",
                self.table,
                other.as_str()
            ))),
        }
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

        let claim = claim_item("conn-1", "ce-7", 1_700_000_000_999);
        assert_eq!(claim["pk"], s("delivery#conn-1"));
        assert_eq!(claim["sk"], s("ce-7"));
        assert_eq!(claim[TTL_ATTRIBUTE], n(1_700_000_000 + 86_400));
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
