//! What the REST client reuses across requests to the same URL: the parsed URL and its bearer
//! token.
//!
//! The SDKs mint a JWT per request (claims serialised, base64, one HMAC) and hubhook did the
//! same, plus two URL parses (ours, then reqwest's of the string). A chat server sends the same
//! few URLs over and over (`/groups/{room}/:send` per room), so an entry per URL is kept and its
//! token reused for the first 80% of its one-hour lifetime: every reused token still has at
//! least 12 minutes left when it is sent, and its claims are exactly those it was minted with
//! (`iat`/`exp` from when it was minted, `aud` the URL), byte for byte what `rest_token` gives.

use std::collections::HashMap;
use std::sync::Mutex;

use http::HeaderValue;

use super::token::{rest_token, REST_TOKEN_TTL_SECS};
use super::AccessKey;

/// A token is reused while it is younger than this (80% of its lifetime).
pub const REUSE_SECS: u64 = REST_TOKEN_TTL_SECS * 4 / 5;
/// Entries kept at most; the map is pruned of stale entries (then cleared) when it is full, so a
/// caller that sends to ever new URLs (many rooms, many users) cannot grow it without bound.
pub const MAX_ENTRIES: usize = 1024;

/// One URL as sent: parsed once, with its `Authorization` value.
#[derive(Clone)]
pub struct Prepared {
    pub url: url::Url,
    pub authorization: HeaderValue,
}

struct Entry {
    prepared: Prepared,
    minted: u64,
}

impl Entry {
    fn fresh(&self, now: u64) -> bool {
        // A clock that went backwards mints anew rather than trusting an `iat` from the future.
        now >= self.minted && now - self.minted < REUSE_SECS
    }
}

/// Thread-safe and bounded; shared by every clone of a `ServiceClient`.
pub struct RequestCache {
    key: AccessKey,
    entries: Mutex<HashMap<String, Entry>>,
}

impl RequestCache {
    pub fn new(key: AccessKey) -> Self {
        RequestCache {
            key,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The parsed URL for `url` (as built by the client) and a bearer token whose `aud` is the
    /// parsed URL's text, which is what goes on the wire. Minted when there is none younger than
    /// [`REUSE_SECS`] at `now` (Unix seconds).
    pub fn prepare(&self, url: &str, now: u64) -> Result<Prepared, url::ParseError> {
        if let Some(e) = self.lock().get(url).filter(|e| e.fresh(now)) {
            return Ok(e.prepared.clone());
        }
        // Minted outside the lock: two callers racing on a new URL each mint one, both valid.
        let parsed = url::Url::parse(url)?;
        let token = rest_token(&self.key, parsed.as_str(), now);
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .expect("a JWT (base64url and dots) is a valid header value");
        authorization.set_sensitive(true);
        let prepared = Prepared {
            url: parsed,
            authorization,
        };
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(url) {
            entries.retain(|_, e| e.fresh(now));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            url.to_string(),
            Entry {
                prepared: prepared.clone(),
                minted: now,
            },
        );
        Ok(prepared)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map holds no invariant a panicking holder could break: keep using it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
    const URL: &str =
        "https://contoso.webpubsub.azure.com/api/hubs/chat/:send?api-version=2024-12-01";

    fn bearer(p: &Prepared) -> String {
        p.authorization.to_str().unwrap().to_string()
    }

    #[test]
    fn a_cached_token_is_the_token_minted_at_its_iat() {
        let c = RequestCache::new(AccessKey::new(KEY));
        let t0 = 1_700_000_000;
        let first = c.prepare(URL, t0).unwrap();
        assert_eq!(
            bearer(&first),
            format!("Bearer {}", rest_token(&AccessKey::new(KEY), URL, t0))
        );
        assert!(first.authorization.is_sensitive());
        assert_eq!(first.url.as_str(), URL);
        // Reused (iat unchanged) until 80% of the lifetime, then minted anew.
        assert_eq!(
            bearer(&c.prepare(URL, t0 + REUSE_SECS - 1).unwrap()),
            bearer(&first)
        );
        let renewed = c.prepare(URL, t0 + REUSE_SECS).unwrap();
        assert_eq!(
            bearer(&renewed),
            format!(
                "Bearer {}",
                rest_token(&AccessKey::new(KEY), URL, t0 + REUSE_SECS)
            )
        );
        // A clock that went backwards gets a token minted now, not one from its future.
        let back = c.prepare(URL, t0).unwrap();
        assert_eq!(
            bearer(&back),
            format!("Bearer {}", rest_token(&AccessKey::new(KEY), URL, t0))
        );
    }

    #[test]
    fn the_audience_is_the_url_as_parsed() {
        let c = RequestCache::new(AccessKey::new(KEY));
        // The parser lower-cases the host: the token is for what is sent.
        let p = c
            .prepare(
                "https://CONTOSO.example/api/hubs/chat/:send?api-version=1",
                1,
            )
            .unwrap();
        assert_eq!(
            p.url.as_str(),
            "https://contoso.example/api/hubs/chat/:send?api-version=1"
        );
        assert_eq!(
            bearer(&p),
            format!(
                "Bearer {}",
                rest_token(&AccessKey::new(KEY), p.url.as_str(), 1)
            )
        );
        assert!(c.prepare("not a url", 1).is_err());
    }

    #[test]
    fn urls_have_tokens_of_their_own_and_the_map_stays_bounded() {
        let c = RequestCache::new(AccessKey::new(KEY));
        let a = c.prepare("http://h/api/a", 1).unwrap();
        let b = c.prepare("http://h/api/b", 1).unwrap();
        assert_ne!(bearer(&a), bearer(&b));
        let c = RequestCache::new(AccessKey::new(KEY));
        for i in 0..MAX_ENTRIES {
            c.prepare(&format!("http://h/api/groups/g{i}/:send"), 1)
                .unwrap();
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        // Full: the stale entries are the first to go...
        let later = 1 + REUSE_SECS;
        c.prepare("http://h/api/late", later).unwrap();
        assert_eq!(c.len(), 1);
        for i in 1..MAX_ENTRIES {
            c.prepare(&format!("http://h/api/users/u{i}/:send"), later)
                .unwrap();
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        // ...and when every entry is fresh, the map starts again rather than grow.
        c.prepare("http://h/api/one-more", later).unwrap();
        assert_eq!(c.len(), 1);
    }
}
