//! Building a webhook the way the service sends it: used by the emulator and by tests, and the
//! mirror image of [`super::WebhookParser`].

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::ids::{
    parse_event_time, validate_ce_id, validate_connection_id, validate_user_id, IdError,
};
use super::{
    sign, Event, EventContext, EventData, ProtocolError, TYPE_PREFIX_SYS, TYPE_PREFIX_USER,
};

/// Headers and body of the `POST` for `event`, signed with `keys` (none: unsigned). Ids and
/// time must pass the rules [`super::WebhookParser`] applies: nothing is sent that a handler
/// would refuse.
pub fn build_webhook(
    ctx: &EventContext,
    event: &Event,
    keys: &[&str],
) -> Result<(HeaderMap, Bytes), ProtocolError> {
    let user_id = checked_user_id(ctx)?;
    let (ce_type, content_type, body) = type_and_body(event);
    let mut h = HeaderMap::new();
    put(&mut h, "content-type", content_type)?;
    put(&mut h, "ce-specversion", "1.0")?;
    put(&mut h, "ce-awpsversion", "1.0")?;
    put(&mut h, "ce-type", &ce_type)?;
    put(
        &mut h,
        "ce-source",
        &format!("/hubs/{}/client/{}", ctx.hub, ctx.connection_id),
    )?;
    put(&mut h, "ce-id", &ctx.ce_id)?;
    let time = ctx
        .ce_time
        .as_deref()
        .map_or_else(now_rfc3339, String::from);
    put(&mut h, "ce-time", &time)?;
    if !keys.is_empty() {
        put(
            &mut h,
            "ce-signature",
            &sign(keys.iter().copied(), &ctx.connection_id),
        )?;
    }
    if let Some(u) = user_id {
        put(&mut h, "ce-userid", u)?;
    }
    put(&mut h, "ce-connectionid", &ctx.connection_id)?;
    put(&mut h, "ce-hub", &ctx.hub)?;
    put(&mut h, "ce-eventname", &ctx.event_name)?;
    if let Some(p) = &ctx.subprotocol {
        put(&mut h, "ce-subprotocol", p)?;
    }
    if !ctx.state.is_empty() {
        put(&mut h, "ce-connectionstate", &ctx.state.encode())?;
    }
    if let Some(o) = &ctx.origin {
        put(&mut h, "webhook-request-origin", o)?;
    }
    Ok((h, body))
}

/// The context's ids and time checked as the parser checks them; the user id to send, if any.
fn checked_user_id(ctx: &EventContext) -> Result<Option<&str>, ProtocolError> {
    let check = |name: &'static str, r: Result<(), IdError>| {
        r.map_err(|e| ProtocolError::InvalidHeader {
            name,
            reason: e.to_string(),
        })
    };
    check(
        "ce-connectionId",
        validate_connection_id(&ctx.connection_id),
    )?;
    check("ce-id", validate_ce_id(&ctx.ce_id))?;
    // An empty user id is no user id, as the parser reads it.
    let user_id = ctx.user_id.as_deref().filter(|u| !u.is_empty());
    if let Some(u) = user_id {
        check("ce-userId", validate_user_id(u))?;
    }
    if let Some(t) = &ctx.ce_time {
        check("ce-time", parse_event_time(t).map(drop))?;
    }
    Ok(user_id)
}

/// The event's `ce-type`, `content-type` and body.
fn type_and_body(event: &Event) -> (String, &'static str, Bytes) {
    match event {
        Event::Connect(req) => (
            format!("{TYPE_PREFIX_SYS}connect"),
            "application/json; charset=utf-8",
            serde_json::to_vec(req)
                .expect("connect request serialises")
                .into(),
        ),
        Event::Connected => (
            format!("{TYPE_PREFIX_SYS}connected"),
            "application/json; charset=utf-8",
            Bytes::from_static(b"{}"),
        ),
        Event::Disconnected(d) => (
            format!("{TYPE_PREFIX_SYS}disconnected"),
            "application/json; charset=utf-8",
            serde_json::json!({ "reason": d.reason }).to_string().into(),
        ),
        Event::User(u) => {
            let (ct, body) = match &u.data {
                EventData::Text(s) => ("text/plain", Bytes::copy_from_slice(s.as_bytes())),
                EventData::Json(v) => (
                    "application/json",
                    serde_json::to_vec(v).expect("json serialises").into(),
                ),
                EventData::Binary(b) => ("application/octet-stream", b.clone()),
            };
            (format!("{TYPE_PREFIX_USER}{}", u.name), ct, body)
        }
    }
}

fn put(h: &mut HeaderMap, name: &'static str, value: &str) -> Result<(), ProtocolError> {
    let v =
        HeaderValue::from_bytes(value.as_bytes()).map_err(|_| ProtocolError::InvalidHeader {
            name,
            reason: "cannot be sent as a header".into(),
        })?;
    h.append(HeaderName::from_static(name), v);
    Ok(())
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
