//! Calling the hub's event handlers the way the service does: the abuse-protection probe before a
//! URL's first use, then signed CloudEvents requests built by the shared `protocol` module.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;

use crate::protocol::{build_webhook, ConnectionState, Event, EventContext};

/// One entry of a hub's event-handler settings (ARM model: urlTemplate, userEventPattern,
/// systemEvents). `{hub}` and `{event}` are replaced per event.
#[derive(Debug, Clone)]
pub struct HandlerSettings {
    pub url_template: String,
    /// `*` or a comma-separated list of user event names.
    pub user_event_pattern: String,
    pub system_events: Vec<String>,
}

impl HandlerSettings {
    fn matches(&self, event: &Event, name: &str) -> bool {
        match event {
            Event::User(_) => {
                let p = self.user_event_pattern.trim();
                p == "*" || p.split(',').any(|n| n.trim() == name)
            }
            _ => self.system_events.iter().any(|e| e == name),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamReply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub state: Option<ConnectionState>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no event handler is configured for {0}")]
    NoHandler(String),
    #[error("abuse-protection handshake with {url} failed: {reason}")]
    Handshake { url: String, reason: String },
    #[error("event handler timed out after {0:?}")]
    Timeout(Duration),
    #[error("event handler unreachable: {0}")]
    Unreachable(String),
}

pub struct Upstream {
    http: reqwest::Client,
    keys: Vec<String>,
    handlers: Vec<HandlerSettings>,
    validated: Mutex<HashSet<String>>,
    timeout: Duration,
    origin: String,
}

impl Upstream {
    pub fn new(
        key: &str,
        handlers: Vec<HandlerSettings>,
        timeout: Duration,
        origin: String,
    ) -> Upstream {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        Upstream {
            http,
            keys: vec![key.to_string()],
            handlers,
            validated: Mutex::new(HashSet::new()),
            timeout,
            origin,
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn handles_system(&self, name: &str) -> bool {
        self.handlers
            .iter()
            .any(|h| h.system_events.iter().any(|e| e == name))
    }

    pub fn handles(&self, event: &Event, name: &str) -> bool {
        self.handlers.iter().any(|h| h.matches(event, name))
    }

    /// Sends one event; `attempts` > 1 retries network failures and 5xx (system events only).
    pub async fn call(
        &self,
        ctx: &EventContext,
        event: &Event,
        attempts: u32,
    ) -> Result<UpstreamReply, UpstreamError> {
        let name = ctx.event_name.as_str();
        let handler = self
            .handlers
            .iter()
            .find(|h| h.matches(event, name))
            .ok_or_else(|| UpstreamError::NoHandler(name.to_string()))?;
        let url = handler
            .url_template
            .replace("{hub}", &ctx.hub)
            .replace("{event}", name);
        self.validate(
            &handler
                .url_template
                .replace("{hub}", &ctx.hub)
                .replace("{event}", "validate"),
        )
        .await?;
        let (headers, body) = build_webhook(ctx, event, &[&self.keys[0]])
            .map_err(|e| UpstreamError::Unreachable(format!("cannot build the request: {e}")))?;
        let started = Instant::now();
        let mut last = None;
        for attempt in 1..=attempts.max(1) {
            let sent = self
                .http
                .post(&url)
                .headers(headers.clone())
                .body(body.clone())
                .timeout(self.timeout)
                .send()
                .await;
            let result = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let h = |n: &str| {
                        resp.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(String::from)
                    };
                    let content_type = h("content-type");
                    let state = h("ce-connectionstate").map(|s| ConnectionState::decode(&s));
                    let body = resp.bytes().await.unwrap_or_default();
                    Ok(UpstreamReply {
                        status,
                        content_type,
                        state,
                        body,
                    })
                }
                Err(e) if e.is_timeout() => Err(UpstreamError::Timeout(self.timeout)),
                Err(e) => Err(UpstreamError::Unreachable(innermost(&e))),
            };
            let status = result.as_ref().map(|r| r.status.as_u16()).unwrap_or(0);
            tracing::info!(
                target: "hubhook::emulator",
                "webhook {name:<12} conn={} -> {} in {:.1} ms",
                ctx.connection_id,
                if status == 0 { "failed".to_string() } else { status.to_string() },
                started.elapsed().as_secs_f64() * 1000.0
            );
            let retry = attempt < attempts && (status == 0 || status >= 500);
            if !retry {
                return result;
            }
            last = Some(result);
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        last.unwrap_or_else(|| Err(UpstreamError::Unreachable("no attempt made".into())))
    }

    async fn validate(&self, url: &str) -> Result<(), UpstreamError> {
        if self.validated.lock().unwrap().contains(url) {
            return Ok(());
        }
        let fail = |reason: String| UpstreamError::Handshake {
            url: url.to_string(),
            reason,
        };
        let resp = self
            .http
            .request(reqwest::Method::OPTIONS, url)
            .header("WebHook-Request-Origin", &self.origin)
            .header("ce-awpsversion", "1.0")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| fail(innermost(&e)))?;
        if !resp.status().is_success() {
            return Err(fail(format!("status {}", resp.status())));
        }
        let allowed: Vec<String> = resp
            .headers()
            .get_all("webhook-allowed-origin")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .collect();
        if !allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(&self.origin))
        {
            return Err(fail(format!(
                "WebHook-Allowed-Origin {allowed:?} does not allow {}",
                self.origin
            )));
        }
        self.validated.lock().unwrap().insert(url.to_string());
        Ok(())
    }
}

fn innermost(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
