//! The inspector's memory: the last [`CAPACITY`] webhooks (request, answer, signature check,
//! time), in memory only, and a broadcast of each new one to the open pages (server-sent events).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::emulator::WebhookLog;
use crate::protocol::SignatureVerifier;
use crate::tunnel::Forwarded;

/// Webhooks kept; the oldest goes first. Never written to disk.
pub const CAPACITY: usize = 1000;

/// One webhook attempt as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Increasing per process; the page's key for "details" and "replay".
    pub id: u64,
    /// RFC 3339, UTC.
    pub at: String,
    pub hub: String,
    pub event: String,
    #[serde(rename = "connectionId")]
    pub connection_id: String,
    #[serde(rename = "userId")]
    pub user_id: Option<String>,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub ms: f64,
    pub attempt: u32,
    /// `ce-signature` checked with the handler's keys; `None` when no request was sent.
    pub verified: Option<bool>,
    /// Set on a replay: the id of the webhook it repeated.
    #[serde(rename = "replayOf")]
    pub replay_of: Option<u64>,
    pub request: Option<Message>,
    pub response: Option<Message>,
}

/// A request or response: headers in order, body as text (lossy UTF-8).
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// A request's method, when it is not `POST` (the tunnel's abuse-protection `OPTIONS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Message {
    fn new(url: Option<String>, headers: &HeaderMap, body: &[u8]) -> Message {
        Message {
            method: None,
            url,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }
}

/// The ring and its subscribers; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Mutex<VecDeque<Arc<Record>>>,
    next_id: AtomicU64,
    live: broadcast::Sender<Arc<Record>>,
    verifier: SignatureVerifier,
}

impl Feed {
    /// `keys`: the handler's signature keys, to show each webhook's `ce-signature` as verified
    /// or not.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Feed {
        Feed {
            inner: Arc::new(Inner {
                ring: Mutex::new(VecDeque::with_capacity(64)),
                next_id: AtomicU64::new(1),
                live: broadcast::channel(256).0,
                verifier: SignatureVerifier::new(keys),
            }),
        }
    }

    fn verify<'a>(&self, signatures: impl Iterator<Item = &'a [u8]>, connection_id: &str) -> bool {
        self.inner
            .verifier
            .verify(signatures, connection_id)
            .is_ok()
    }

    /// Records one webhook a tunnel forwarded to the local handler: the service signed it, so
    /// the signature shown is the service's, checked with the resource's key.
    pub fn record_tunnelled(&self, f: &Forwarded) -> Arc<Record> {
        let connection_id = f.header("ce-connectionid").unwrap_or_default().to_string();
        let probe = f.log.method.eq_ignore_ascii_case("OPTIONS");
        let verified = (!probe).then(|| {
            let sigs = f
                .request_headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("ce-signature"))
                .map(|(_, v)| v.as_bytes());
            self.verify(sigs, &connection_id)
        });
        // An error means the handler gave no answer: the service got the tunnel's own 502.
        let answered = f.log.error.is_none();
        self.push(Record {
            id: 0,
            at: crate::protocol::now_rfc3339(),
            hub: f.header("ce-hub").unwrap_or_default().to_string(),
            event: f.log.event.clone(),
            user_id: f.header("ce-userid").map(String::from),
            connection_id,
            status: answered.then_some(f.status),
            error: f.log.error.clone(),
            ms: (f.log.elapsed.as_secs_f64() * 10_000.0).round() / 10.0,
            attempt: 1,
            verified,
            replay_of: None,
            request: Some(Message {
                method: (!f.log.method.eq_ignore_ascii_case("POST")).then(|| f.log.method.clone()),
                url: f.url.clone(),
                headers: f.request_headers.clone(),
                body: String::from_utf8_lossy(&f.request_body).into_owned(),
            }),
            response: answered.then(|| Message {
                method: None,
                url: None,
                headers: f.response_headers.clone(),
                body: String::from_utf8_lossy(&f.response_body).into_owned(),
            }),
        })
    }

    /// Records one webhook attempt (from the emulator's observer, or a replay).
    pub fn record(&self, log: &WebhookLog, replay_of: Option<u64>) -> Arc<Record> {
        let request = log.request.as_deref();
        let header = |n: &str| {
            request
                .and_then(|r| r.headers.get(n))
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let verified = request.map(|r| {
            self.verify(
                r.headers
                    .get_all("ce-signature")
                    .iter()
                    .map(|v| v.as_bytes()),
                &log.connection_id,
            )
        });
        self.push(Record {
            id: 0,
            at: crate::protocol::now_rfc3339(),
            hub: log.hub.clone(),
            event: log.event.clone(),
            connection_id: log.connection_id.clone(),
            user_id: header("ce-userid"),
            status: log.status,
            error: log.error.clone(),
            ms: (log.elapsed.as_secs_f64() * 10_000.0).round() / 10.0,
            attempt: log.attempt,
            verified,
            replay_of,
            request: request.map(|r| Message::new(Some(r.url.clone()), &r.headers, &r.body)),
            response: log
                .response
                .as_ref()
                .map(|r| Message::new(None, &r.headers, &r.body)),
        })
    }

    /// Numbers `record`, keeps it (dropping the oldest past [`CAPACITY`]) and tells the pages.
    fn push(&self, mut record: Record) -> Arc<Record> {
        record.id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let record = Arc::new(record);
        {
            let mut ring = self.inner.ring.lock().unwrap();
            if ring.len() == CAPACITY {
                ring.pop_front();
            }
            ring.push_back(record.clone());
        }
        // No open page is not an error.
        let _ = self.inner.live.send(record.clone());
        record
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Arc<Record>> {
        self.inner
            .ring
            .lock()
            .unwrap()
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Record>> {
        let ring = self.inner.ring.lock().unwrap();
        ring.iter().find(|r| r.id == id).cloned()
    }

    pub fn clear(&self) {
        self.inner.ring.lock().unwrap().clear();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.inner.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::emulator::{WebhookRequest, WebhookResponse};
    use crate::protocol::sign;

    fn log(conn: &str, sig: &str) -> WebhookLog {
        let mut headers = HeaderMap::new();
        headers.insert("ce-signature", sig.parse().unwrap());
        headers.insert("ce-userid", "alice".parse().unwrap());
        WebhookLog {
            hub: "chat".into(),
            event: "message".into(),
            connection_id: conn.into(),
            status: Some(200),
            error: None,
            elapsed: Duration::from_micros(1234),
            attempt: 1,
            request: Some(Arc::new(WebhookRequest {
                url: "http://127.0.0.1:1/eventhandler".into(),
                headers,
                body: "{\"text\":\"hi\"}".into(),
            })),
            response: Some(WebhookResponse {
                headers: HeaderMap::new(),
                body: "ok".into(),
            }),
        }
    }

    fn tunnelled(method: &str, sig: &str, error: Option<&str>) -> Forwarded {
        use crate::tunnel::forward::ForwardLog;
        Forwarded {
            log: ForwardLog {
                method: method.into(),
                path: "/eventhandler".into(),
                event: "connect".into(),
                status: if error.is_some() { 502 } else { 200 },
                elapsed: Duration::from_micros(2500),
                error: error.map(String::from),
            },
            url: Some("http://127.0.0.1:1/eventhandler".into()),
            request_headers: vec![
                ("ce-connectionid".into(), "c1".into()),
                ("ce-hub".into(), "chat".into()),
                ("ce-userid".into(), "carol".into()),
                ("ce-signature".into(), sig.into()),
            ],
            request_body: "{}".into(),
            status: if error.is_some() { 502 } else { 200 },
            response_headers: vec![],
            response_body: "{\"groups\":[\"lobby\"]}".into(),
        }
    }

    #[test]
    fn tunnelled_webhooks_show_the_services_signature_and_the_handlers_answer() {
        let feed = Feed::new(["resource-key"]);
        let ok = feed.record_tunnelled(&tunnelled("POST", &sign(["resource-key"], "c1"), None));
        assert_eq!(
            (
                ok.status,
                ok.verified,
                ok.user_id.as_deref(),
                ok.hub.as_str()
            ),
            (Some(200), Some(true), Some("carol"), "chat")
        );
        assert_eq!(ok.connection_id, "c1");
        assert_eq!(ok.ms, 2.5);
        let req = ok.request.as_ref().unwrap();
        assert_eq!(req.method, None, "POST is the default");
        assert_eq!(req.url.as_deref(), Some("http://127.0.0.1:1/eventhandler"));
        assert!(ok.response.as_ref().unwrap().body.contains("lobby"));
        let forged = feed.record_tunnelled(&tunnelled("POST", &sign(["other"], "c1"), None));
        assert_eq!(forged.verified, Some(false));
        // The handler never answered: the service got the tunnel's 502, the page "failed".
        let down = feed.record_tunnelled(&tunnelled("POST", "x", Some("upstream unreachable")));
        assert_eq!((down.status, down.response.is_none()), (None, true));
        assert_eq!(down.error.as_deref(), Some("upstream unreachable"));
        // The abuse-protection probe is not signed: no verdict.
        let probe = feed.record_tunnelled(&tunnelled("OPTIONS", "", None));
        assert_eq!(probe.verified, None);
        assert_eq!(
            probe.request.as_ref().unwrap().method.as_deref(),
            Some("OPTIONS")
        );
        assert_eq!(feed.list()[0].id, probe.id);
    }

    #[test]
    fn records_newest_first_bounded_with_the_signature_checked() {
        let feed = Feed::new(["key-one"]);
        let good = feed.record(&log("c1", &sign(["key-one"], "c1")), None);
        assert_eq!(good.verified, Some(true));
        assert_eq!(good.user_id.as_deref(), Some("alice"));
        assert_eq!(good.ms, 1.2);
        let bad = feed.record(&log("c2", &sign(["other"], "c2")), Some(good.id));
        assert_eq!(bad.verified, Some(false));
        assert_eq!(bad.replay_of, Some(good.id));
        assert_eq!(feed.list()[0].id, bad.id);
        for _ in 0..CAPACITY {
            feed.record(&log("c3", "x"), None);
        }
        assert_eq!(feed.list().len(), CAPACITY);
        assert!(feed.get(good.id).is_none(), "the oldest went first");
        feed.clear();
        assert!(feed.list().is_empty());
    }
}
