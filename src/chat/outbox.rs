//! Sending what the outbox holds: right away from the webhook that caused it, again from a retry
//! of that webhook, and from the background sweeper after a crash or an outage.
//!
//! A broadcast leaves the outbox only after the REST call succeeded, so it is sent at least once;
//! it carries the message (or notice) id, so a client drops the rare duplicate.

use std::time::Duration;

use super::BroadcastError;
use crate::protocol::EventData;
use crate::service::{SendOptions, ServiceClient};
use crate::store::{now_ms, Broadcast, SharedStore};

/// How the sweeper works through the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Pause between two looks at the outbox.
    pub sweep_every: Duration,
    /// The sweeper leaves a new broadcast alone this long: the webhook that caused it is sending
    /// it (the REST client's own retries end within 8 s).
    pub grace: Duration,
    /// A broadcast still unsent this long after its event is dropped, with an error in the log.
    pub give_up_after: Duration,
    /// `/healthz` reports the outbox as behind once its oldest broadcast is this old.
    pub behind_after: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            sweep_every: Duration::from_secs(1),
            grace: Duration::from_secs(15),
            give_up_after: Duration::from_secs(24 * 3600),
            behind_after: Duration::from_secs(60),
        }
    }
}

/// Broadcasts one sweep sends at most (they go one after another: a bounded rate).
const SWEEP_BATCH: usize = 32;
/// Back-off after a failed send: 1 s doubling per attempt, at most 5 minutes.
const FIRST_BACKOFF_MS: i64 = 1_000;
const MAX_BACKOFF_MS: i64 = 300_000;

pub fn backoff_ms(attempts: u32) -> i64 {
    FIRST_BACKOFF_MS
        .saturating_mul(1i64 << attempts.min(20))
        .min(MAX_BACKOFF_MS)
}

#[derive(Clone)]
pub struct Outbox {
    store: SharedStore,
    service: ServiceClient,
}

impl Outbox {
    pub fn new(store: SharedStore, service: ServiceClient) -> Self {
        Outbox { store, service }
    }

    /// Sends `b` to its room and takes it out of the outbox; on failure it stays, with the
    /// attempt counted and the next one pushed back.
    ///
    /// Runs on a task of its own: once a write is committed, its send must finish even if the
    /// service gives up on the webhook and the HTTP future is dropped.
    ///
    /// A send that went out is answered before it is marked sent: the mark is the sweeper's
    /// bookkeeping, not part of the acknowledgement (a lost mark costs one resend, which
    /// clients drop by id), and waiting for it put a second fsync'd commit in every reply.
    pub async fn deliver(&self, b: Broadcast) -> Result<(), BroadcastError> {
        let this = self.clone();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            this.deliver_now(&b, |outcome| drop(answer.send(outcome)))
                .await
        });
        match answered.await {
            Ok(outcome) => outcome,
            // The task ended without answering: it panicked or was cancelled.
            Err(_) => Err(task
                .await
                .err()
                .map_or(BroadcastError::NoAnswer, BroadcastError::Task)),
        }
    }

    /// Sends `b` and hands the outcome to `answer`: a failure after it is recorded, a success
    /// before it is marked sent.
    async fn deliver_now(&self, b: &Broadcast, answer: impl FnOnce(Result<(), BroadcastError>)) {
        match self.send(b).await {
            Ok(()) => {
                answer(Ok(()));
                self.mark_sent(b).await;
            }
            Err(e) => {
                self.record_failure(b).await;
                answer(Err(e));
            }
        }
    }

    async fn mark_sent(&self, b: &Broadcast) {
        if let Err(e) = self.store.broadcast_sent(b).await {
            // Sent, but still listed: it will go out once more (clients drop it by id).
            tracing::warn!(id = %b.id, error = %e, "broadcast sent but not marked sent");
        }
    }

    async fn record_failure(&self, b: &Broadcast) {
        let retry_at = now_ms().saturating_add(backoff_ms(b.attempts));
        if let Err(store) = self.store.broadcast_failed(b, retry_at).await {
            tracing::warn!(id = %b.id, error = %store, "broadcast failure not recorded");
        }
    }

    async fn send(&self, b: &Broadcast) -> Result<(), BroadcastError> {
        // The payload was serialised from a `Value` when it was stored, so it goes out as that
        // text: parsing it into a `Value` to serialise it again gave the same bytes, at the cost
        // of a tree of allocations. Validated without building anything; text that is not JSON
        // (never written by hubhook) is still sent as a JSON string, as before.
        let valid = serde_json::from_str::<serde::de::IgnoredAny>(&b.payload).is_ok();
        let opts = SendOptions::default();
        let sent = if valid {
            let json = bytes::Bytes::from(b.payload.clone());
            self.service.send_json_to_group(&b.room, json, &opts).await
        } else {
            let text = EventData::Json(b.payload.clone().into());
            self.service.send_to_group(&b.room, &text, &opts).await
        };
        sent.map_err(BroadcastError::from)
    }

    /// One pass over what is due: what was sent, what failed, what was given up.
    pub async fn sweep(&self, config: &OutboxConfig) -> SweepReport {
        let mut report = SweepReport::default();
        let now = now_ms();
        let due = match self.store.due_broadcasts(now, SWEEP_BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "outbox sweep: cannot read the outbox");
                report.errors += 1;
                return report;
            }
        };
        let give_up_ms = i64::try_from(config.give_up_after.as_millis()).unwrap_or(i64::MAX);
        for b in due {
            if now.saturating_sub(b.created_ms) > give_up_ms {
                tracing::error!(id = %b.id, room = %b.room, attempts = b.attempts,
                    "outbox: giving up on a broadcast unsent for longer than HUBHOOK_OUTBOX_GIVE_UP");
                match self.store.broadcast_sent(&b).await {
                    Ok(()) => report.given_up += 1,
                    Err(_) => report.errors += 1,
                }
                continue;
            }
            let mut outcome = Err(BroadcastError::NoAnswer);
            self.deliver_now(&b, |o| outcome = o).await;
            match outcome {
                Ok(()) => report.sent += 1,
                Err(e) => {
                    tracing::warn!(id = %b.id, attempts = b.attempts + 1, error = %e, "outbox: send failed, will retry");
                    report.failed += 1;
                }
            }
        }
        if report.sent + report.given_up > 0 {
            tracing::info!(
                sent = report.sent,
                given_up = report.given_up,
                "outbox sweep"
            );
        }
        report
    }

    /// Sweeps every `config.sweep_every` for as long as the process lives.
    pub fn spawn_sweeper(&self, config: OutboxConfig) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.sweep_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.sweep(&config).await;
            }
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub sent: usize,
    pub failed: usize,
    pub given_up: usize,
    pub errors: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(0), 1_000);
        assert_eq!(backoff_ms(1), 2_000);
        assert_eq!(backoff_ms(5), 32_000);
        assert_eq!(backoff_ms(9), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(u32::MAX), MAX_BACKOFF_MS);
    }
}
