//! The per-user message rate limit (`HUBHOOK_MESSAGE_RATE`): one token bucket per user (the
//! connection id for anonymous senders), kept in this instance's memory. Several instances
//! (Lambda containers, Functions workers) each allow the full rate: the limit is per instance.
//!
//! A bucket of our own rather than the `governor` crate: it is some forty lines, needs no new
//! dependency, and keys are pruned here (a full bucket is forgotten) so idle users cost nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `N/s`, `N/m` or `N/h`, with `,burst=B` (default: the burst is N).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MessageRate {
    /// Messages allowed per `per`.
    pub count: u32,
    pub per: Duration,
    /// Messages that may be sent at once after a quiet spell.
    pub burst: u32,
}

/// Why a `HUBHOOK_MESSAGE_RATE` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateParseError {
    /// The value as given (quoted in the message).
    #[error("{0:?} is not a rate (e.g. 10/s, 600/m, 10/s,burst=30)")]
    NotARate(String),
    #[error("count and burst must be 1-1000000")]
    OutOfRange,
}

impl MessageRate {
    pub fn parse(v: &str) -> Result<MessageRate, RateParseError> {
        let bad = || RateParseError::NotARate(v.to_string());
        let (rate, burst) = match v.split_once(',') {
            Some((r, b)) => (r.trim(), Some(b.trim())),
            None => (v.trim(), None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let burst = match burst {
            None => count,
            Some(b) => b
                .strip_prefix("burst=")
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(bad)?,
        };
        if count == 0 || burst == 0 || count > 1_000_000 || burst > 1_000_000 {
            return Err(RateParseError::OutOfRange);
        }
        Ok(MessageRate { count, per, burst })
    }

    fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl std::fmt::Display for MessageRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "second",
            60 => "minute",
            _ => "hour",
        };
        write!(
            f,
            "{} messages per {unit} (burst {})",
            self.count, self.burst
        )
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by sender.
pub struct RateLimiter {
    rate: MessageRate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets are pruned (full ones dropped) when the map grows past this.
const PRUNE_AT: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: MessageRate) -> Self {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> MessageRate {
        self.rate
    }

    /// Takes one token of `key`'s bucket: false when it is empty (over the limit).
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> bool {
        let burst = f64::from(self.rate.burst);
        let per_second = self.rate.per_second();
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(key) {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second < burst
            });
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rates() {
        let r = MessageRate::parse("10/s").unwrap();
        assert_eq!((r.count, r.per, r.burst), (10, Duration::from_secs(1), 10));
        let r = MessageRate::parse("600/m, burst=30").unwrap();
        assert_eq!(
            (r.count, r.per, r.burst),
            (600, Duration::from_secs(60), 30)
        );
        for bad in ["", "10", "10/d", "x/s", "0/s", "10/s,30", "10/s,burst=0"] {
            assert!(MessageRate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            MessageRate::parse("2/s,burst=3").unwrap().to_string(),
            "2 messages per second (burst 3)"
        );
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = RateLimiter::new(MessageRate::parse("2/s,burst=3").unwrap());
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow_at("u", t0)));
        assert!(!l.allow_at("u", t0));
        assert!(l.allow_at("v", t0), "buckets are per user");
        assert!(l.allow_at("u", t0 + Duration::from_millis(500)));
        assert!(!l.allow_at("u", t0 + Duration::from_millis(600)));
        assert!((0..3).all(|_| l.allow_at("u", t0 + Duration::from_secs(10))));
    }
}
