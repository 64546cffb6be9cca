//! `/healthz`: can the store take a write, and is the outbox keeping up? Probed at most once a
//! second, so a load balancer polling it cannot turn into write load.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::chat::Chat;
use crate::store::{now_ms, Backlog};

/// How long one probe's answer is reused.
const CACHE_FOR: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct HealthCheck {
    last: Mutex<Option<(Instant, Report)>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(skip)]
    pub status: StatusCode,
    /// `ok`, or the one-line reason the service is not healthy.
    pub reason: String,
    /// `ok` or why a write failed.
    pub store: String,
    pub outbox: OutboxReport,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OutboxReport {
    /// Broadcasts not yet sent (`null` when the store could not say).
    pub pending: Option<u64>,
    pub oldest_age_ms: Option<i64>,
    pub behind_after_ms: u128,
}

impl HealthCheck {
    pub async fn report(&self, chat: &Chat) -> Report {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return report.clone();
            }
        }
        let report = probe(chat).await;
        *last = Some((Instant::now(), report.clone()));
        report
    }
}

async fn probe(chat: &Chat) -> Report {
    let behind_after = chat.config().outbox.behind_after;
    // Side by side: each is bounded by the store's deadline, so a store that hangs answers
    // 503 after one deadline, not two (a platform probe's timeout is often under 10 s).
    let (store, backlog) = tokio::join!(chat.store().health(), chat.store().backlog());
    let outbox = OutboxReport {
        pending: backlog.as_ref().ok().map(|b| b.pending),
        oldest_age_ms: backlog
            .as_ref()
            .ok()
            .and_then(|b| b.oldest_ms)
            .map(|t| now_ms().saturating_sub(t).max(0)),
        behind_after_ms: behind_after.as_millis(),
    };
    let (status, reason) = match (&store, &backlog) {
        (Err(e), _) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        (Ok(()), Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("outbox unreadable: {e}"),
        ),
        (Ok(()), Ok(b)) => match behind(b, behind_after) {
            Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
            None => (StatusCode::OK, "ok".to_string()),
        },
    };
    Report {
        status,
        reason,
        store: store.err().map_or_else(|| "ok".into(), |e| e.to_string()),
        outbox,
    }
}

fn behind(b: &Backlog, after: Duration) -> Option<String> {
    let age = now_ms().saturating_sub(b.oldest_ms?);
    (age > after.as_millis() as i64).then(|| {
        format!(
            "outbox behind: {} broadcasts unsent, the oldest for {} s",
            b.pending,
            age / 1000
        )
    })
}
