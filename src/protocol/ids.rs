//! The rules for what identifies a connection, a user and an event, and for an event's time:
//! checked wherever one arrives (webhook headers, `/negotiate`'s query, webhooks the emulator
//! builds), so that nothing is stored that a later step (a cursor, a REST path) would refuse.

use time::OffsetDateTime;

/// `ce-id`: the service sends small integers or GUIDs.
pub const MAX_CE_ID_BYTES: usize = 128;
/// `ce-connectionId` (and MQTT's physical connection and session ids): the service's are 22–40
/// characters; MQTT client ids are at most 23 bytes unless a broker allows more.
pub const MAX_CONNECTION_ID_BYTES: usize = 128;
/// `ce-userId` and `/negotiate`'s `userId`: the REST API only says "at least 1 character"; 1024
/// matches its limit for group names.
pub const MAX_USER_ID_BYTES: usize = 1024;
/// Earliest accepted `ce-time` (a year): older is a broken clock or a forgery.
pub const MIN_EVENT_YEAR: i32 = 2000;
/// Latest accepted `ce-time`: now plus this much clock skew. Message ids start with the time as
/// 13 digits of milliseconds, which a time past 2286 would overflow.
pub const MAX_EVENT_TIME_AHEAD: time::Duration = time::Duration::DAY;

/// Why an id or a time is refused: the reason, without the value (which may be huge).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("empty")]
    Empty,
    #[error("longer than {0} bytes")]
    TooLong(usize),
    #[error("not printable ASCII")]
    NotPrintable,
    #[error("not an RFC 3339 time")]
    NotATime,
    #[error("outside {MIN_EVENT_YEAR}-01-01 .. now + 1 day")]
    TimeOutOfRange,
}

/// 1..=`max` bytes of printable ASCII (space to `~`): what an HTTP header can carry as text.
fn validate(value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        Err(IdError::Empty)
    } else if value.len() > max {
        Err(IdError::TooLong(max))
    } else if !value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        Err(IdError::NotPrintable)
    } else {
        Ok(())
    }
}

pub fn validate_ce_id(id: &str) -> Result<(), IdError> {
    validate(id, MAX_CE_ID_BYTES)
}

pub fn validate_connection_id(id: &str) -> Result<(), IdError> {
    validate(id, MAX_CONNECTION_ID_BYTES)
}

pub fn validate_user_id(id: &str) -> Result<(), IdError> {
    validate(id, MAX_USER_ID_BYTES)
}

/// A `ce-time`: RFC 3339, from [`MIN_EVENT_YEAR`] to now + [`MAX_EVENT_TIME_AHEAD`].
pub fn parse_event_time(t: &str) -> Result<OffsetDateTime, IdError> {
    let parsed = OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|_| IdError::NotATime)?;
    let latest = OffsetDateTime::now_utc() + MAX_EVENT_TIME_AHEAD;
    if parsed.year() < MIN_EVENT_YEAR || parsed > latest {
        return Err(IdError::TimeOutOfRange);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rules() {
        assert_eq!(validate_ce_id("1"), Ok(()));
        assert_eq!(validate_ce_id(&"x".repeat(128)), Ok(()));
        assert_eq!(validate_ce_id(&"x".repeat(129)), Err(IdError::TooLong(128)));
        assert_eq!(validate_connection_id(""), Err(IdError::Empty));
        assert_eq!(validate_connection_id("a\tb"), Err(IdError::NotPrintable));
        assert_eq!(validate_user_id("ü"), Err(IdError::NotPrintable));
        assert_eq!(validate_user_id("alice smith@x"), Ok(()));
        assert_eq!(validate_user_id(&"u".repeat(1024)), Ok(()));
        assert!(validate_user_id(&"u".repeat(1025)).is_err());
    }

    #[test]
    fn time_rules() {
        assert!(parse_event_time("2024-05-01T10:00:00Z").is_ok());
        assert!(parse_event_time("2024-05-01T10:00:00.123+02:00").is_ok());
        assert!(parse_event_time(&crate::protocol::now_rfc3339()).is_ok());
        for (t, e) in [
            ("9999-01-01T00:00:00Z", IdError::TimeOutOfRange),
            ("1999-12-31T23:59:59Z", IdError::TimeOutOfRange),
            ("1970-01-01T00:00:00Z", IdError::TimeOutOfRange),
            ("2024-05-01 10:00:00", IdError::NotATime),
            ("yesterday", IdError::NotATime),
        ] {
            assert_eq!(parse_event_time(t), Err(e), "{t}");
        }
        let tomorrow_plus = (OffsetDateTime::now_utc() + time::Duration::hours(25))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(
            parse_event_time(&tomorrow_plus),
            Err(IdError::TimeOutOfRange)
        );
    }
}
