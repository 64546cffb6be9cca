//! `Endpoint=https://x.webpubsub.azure.com;AccessKey=...;Version=1.0;[Port=...]`

use std::fmt;

use url::Url;

use super::ServiceError;

/// An access key. Its `Debug`/`Display` never print it: the only way to the bytes is
/// [`AccessKey::expose`], which signing code calls.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey(String);

/// Length of a Web PubSub access key as the portal shows it: 44 base64 characters (32 bytes
/// with one `=` of padding; the reference's sample keys are 44 characters without padding).
pub const ACCESS_KEY_CHARS: usize = 44;

impl AccessKey {
    pub fn new(key: impl Into<String>) -> Self {
        AccessKey(key.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `key` has the form of a key the service issues ([`ACCESS_KEY_CHARS`] base64
    /// characters). Settings refuse any other, so that a typo such as `1` cannot become a key
    /// anyone can sign with; the local emulators' public key has this form too. Parsing a
    /// connection string does not apply it: tests and embedders use short keys on purpose.
    pub fn has_service_form(key: &str) -> bool {
        use base64::Engine as _;
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        key.len() == ACCESS_KEY_CHARS && engine.decode(key).is_ok()
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKey(<redacted>)")
    }
}

impl fmt::Display for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// scheme://host[:port], no path, no trailing slash; default ports dropped.
    endpoint: Url,
    pub access_key: AccessKey,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ConnectionString(Endpoint={};AccessKey=<redacted>)",
            self.origin()
        )
    }
}

impl ConnectionString {
    /// Errors name the part that is wrong and never echo a value: a malformed connection string
    /// often has the key where another part should be.
    pub fn new(
        endpoint: &str,
        access_key: AccessKey,
        port: Option<u16>,
    ) -> Result<Self, ServiceError> {
        let invalid =
            |why: &str| ServiceError::ConnectionString(format!("invalid Endpoint: {why}"));
        if access_key.expose().is_empty() {
            return Err(ServiceError::ConnectionString("AccessKey is empty".into()));
        }
        // A key pasted into the endpoint would otherwise become its host, printed at start.
        let carries_key =
            |text: &str| access_key.expose().len() >= 16 && text.contains(access_key.expose());
        if carries_key(endpoint) {
            return Err(invalid("it contains the AccessKey"));
        }
        let has_scheme = endpoint.contains("://");
        let with_scheme = if has_scheme {
            endpoint.to_string()
        } else {
            format!("https://{endpoint}")
        };
        let mut url = Url::parse(with_scheme.trim_end_matches('/'))
            .map_err(|_| invalid("not a URL (https://<name>.webpubsub.azure.com)"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("must not carry a user name or password"));
        }
        let host = match url.host() {
            None => return Err(invalid("no host")),
            Some(url::Host::Domain("")) => return Err(invalid("no host")),
            Some(h) => h,
        };
        // Without a scheme the value is guessed to be a host name: accept only what looks like
        // one (a dotted name, localhost or an IP), not a bare word such as a stray key.
        if !has_scheme {
            if let url::Host::Domain(d) = host {
                if !d.contains('.') && !d.eq_ignore_ascii_case("localhost") {
                    return Err(invalid(
                        "not a host name (give https://<name>.webpubsub.azure.com)",
                    ));
                }
            }
        }
        // `url` lets `;` and `=` into a domain (even by IDNA mapping: U+037E becomes `;`), and a
        // connection string cannot carry them back (found by fuzz/connection_string).
        if let Some(url::Host::Domain(d)) = url.host() {
            if !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return Err(invalid("the host is not a DNS name"));
            }
        }
        // `user[:password]@` would ride along in every REST URL, audience and `Debug` line, and
        // `to_secret_string` drops it (found by fuzz/connection_string). Not echoed: it may hold a
        // password.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ServiceError::ConnectionString(
                "invalid Endpoint: a user name or password in it is not supported".into(),
            ));
        }
        // As for `Port=` (found by fuzz/connection_string: `x:0` parsed, then failed to round-trip).
        if url.port() == Some(0) {
            return Err(invalid("port 0"));
        }
        if port.is_some() {
            url.set_port(port)
                .map_err(|_| invalid("cannot carry a port"))?;
        }
        url.set_path("");
        url.set_query(None);
        url.set_fragment(None);
        // Again on what is kept (the origin, as `origin()` gives it): a host is lower-cased and
        // `Port=` applied, so a key spelled differently in the text passed the check above
        // (found by fuzz/connection_string).
        if carries_key(url.as_str().trim_end_matches('/')) {
            return Err(invalid("it contains the AccessKey"));
        }
        Ok(ConnectionString {
            endpoint: url,
            access_key,
        })
    }

    /// Keys are case-insensitive and order-free; values split on the first `=` (keys end in `=`);
    /// unknown keys are ignored. Errors name the missing or wrong part and never echo a value.
    pub fn parse(s: &str) -> Result<Self, ServiceError> {
        let (mut endpoint, mut key, mut port) = (None, None, None);
        let parts = s.split(';').map(str::trim).filter(|p| !p.is_empty());
        for (i, part) in parts.enumerate() {
            let Some((k, v)) = part.split_once('=') else {
                return Err(ServiceError::ConnectionString(format!(
                    "part {} is not Key=Value",
                    i + 1
                )));
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(v.trim().to_string()),
                "accesskey" => key = Some(v.trim().to_string()),
                "port" => {
                    let p: u16 = v.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                        ServiceError::ConnectionString("invalid Port: not a number 1-65535".into())
                    })?;
                    port = Some(p);
                }
                _ => {}
            }
        }
        let endpoint =
            endpoint.ok_or_else(|| ServiceError::ConnectionString("no Endpoint".into()))?;
        let key = key.ok_or_else(|| {
            ServiceError::ConnectionString("no AccessKey (identity auth is not supported)".into())
        })?;
        ConnectionString::new(&endpoint, AccessKey::new(key), port)
    }

    /// A local emulator's connection string (`http://localhost:PORT`); the one place its text is
    /// written.
    pub fn local(port: u16, access_key: &str) -> Self {
        ConnectionString::new("http://localhost", AccessKey::new(access_key), Some(port))
            .expect("a localhost endpoint with a port is valid")
    }

    /// `Endpoint=…;Port=…;AccessKey=…;Version=1.0;`, the form every SDK parses. It holds the key:
    /// print it only for a local emulator, whose key is public.
    pub fn to_secret_string(&self) -> String {
        let port = self
            .endpoint
            .port()
            .map(|p| format!("Port={p};"))
            .unwrap_or_default();
        let host = self.endpoint.host_str().unwrap_or_default();
        format!(
            "Endpoint={}://{host};{port}AccessKey={};Version=1.0;",
            self.endpoint.scheme(),
            self.access_key.expose()
        )
    }

    /// `http(s)://host[:port]` — the base of REST URLs and of client-token audiences.
    pub fn origin(&self) -> &str {
        self.endpoint.as_str().trim_end_matches('/')
    }

    pub fn host(&self) -> &str {
        self.endpoint.host_str().unwrap_or_default()
    }

    /// True for localhost / 127.0.0.0/8 / ::1: local development, where an open negotiate is safe.
    pub fn is_loopback(&self) -> bool {
        match self.endpoint.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
    }

    /// The audience of client access tokens: `http(s)://host[:port]/client/hubs/{hub}`.
    pub fn client_audience(&self, hub: &str) -> String {
        format!("{}/client/hubs/{hub}", self.origin())
    }

    /// `ws(s)://host[:port]/client/hubs/{hub}`.
    pub fn client_base_url(&self, hub: &str) -> String {
        let origin = self.origin();
        let ws = match origin.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", origin.trim_start_matches("http://")),
        };
        format!("{ws}/client/hubs/{hub}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `s` is refused (it must be).
    fn refusal(s: &str) -> String {
        ConnectionString::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn local_strings_round_trip() {
        let cs = ConnectionString::local(8080, KEY);
        let text = cs.to_secret_string();
        assert_eq!(
            text,
            format!("Endpoint=http://localhost;Port=8080;AccessKey={KEY};Version=1.0;")
        );
        assert_eq!(
            ConnectionString::parse(&text).unwrap().origin(),
            cs.origin()
        );
        let remote = ConnectionString::parse(&format!(
            "Endpoint=https://contoso.webpubsub.azure.com;AccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(
            ConnectionString::parse(&remote.to_secret_string())
                .unwrap()
                .origin(),
            "https://contoso.webpubsub.azure.com"
        );
    }

    const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

    #[test]
    fn parses_the_reference_forms() {
        let c = ConnectionString::parse(&format!(
            "Endpoint=https://contoso.webpubsub.azure.com;AccessKey={KEY};Version=1.0;"
        ))
        .unwrap();
        assert_eq!(c.origin(), "https://contoso.webpubsub.azure.com");
        assert_eq!(c.access_key.expose(), KEY);
        assert_eq!(
            c.client_base_url("chat"),
            "wss://contoso.webpubsub.azure.com/client/hubs/chat"
        );
        assert_eq!(
            c.client_audience("chat"),
            "https://contoso.webpubsub.azure.com/client/hubs/chat"
        );
        assert!(!c.is_loopback());

        let c = ConnectionString::parse(&format!(
            "Endpoint=http://localhost;Port=8080;AccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(c.origin(), "http://localhost:8080");
        assert_eq!(
            c.client_base_url("chat"),
            "ws://localhost:8080/client/hubs/chat"
        );
        assert_eq!(
            c.client_audience("chat"),
            "http://localhost:8080/client/hubs/chat"
        );
        assert!(c.is_loopback());

        let c = ConnectionString::parse(&format!(
            "Endpoint=https://contoso.webpubsub.azure.com/;Port=443;AccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(c.origin(), "https://contoso.webpubsub.azure.com");
    }

    #[test]
    fn keys_are_case_insensitive_order_free_and_values_keep_equals() {
        let c = ConnectionString::parse(
            "accesskey=abc==;VERSION=1.0;ClientId=x;endpoint=contoso.example",
        )
        .unwrap();
        assert_eq!(c.access_key.expose(), "abc==");
        assert_eq!(c.origin(), "https://contoso.example");
        assert!(
            ConnectionString::parse("Endpoint=http://127.0.0.1:9;AccessKey=k")
                .unwrap()
                .is_loopback()
        );
    }

    #[test]
    fn errors_name_the_missing_part_and_never_the_key() {
        assert!(refusal(&format!("AccessKey={KEY}")).contains("no Endpoint"));
        assert!(refusal("Endpoint=https://x").contains("no AccessKey"));
        assert!(
            refusal(&format!("Endpoint=https://x;AccessKey={KEY};Port=http"))
                .contains("invalid Port")
        );
        assert!(
            refusal(&format!("Endpoint=https://x;AccessKey={KEY};Port=0")).contains("invalid Port")
        );
        assert!(refusal(&format!("Endpoint=ftp://x;AccessKey={KEY}")).contains("scheme"));
        assert!(refusal(&format!("Endpoint=https://x;{KEY}")).contains("not Key=Value"));
        assert!(refusal("Endpoint=https://x;AccessKey=").contains("empty"));
        for s in [
            format!("AccessKey={KEY}"),
            format!("Endpoint=ftp://x;AccessKey={KEY}"),
            format!("Endpoint=https://x;{KEY}x="),
            format!("Endpoint=https://x;{KEY}"),
            format!("Endpoint=https://x;AccessKey={KEY};Port={KEY}"),
            format!("Endpoint=http://[{KEY}]:1;AccessKey=other"),
            format!("Endpoint=http://user:{KEY}@host.example;AccessKey=other"),
            format!("Endpoint={KEY};AccessKey=other"),
            format!("Endpoint={KEY};AccessKey={KEY}"),
            format!("Endpoint=https://{KEY};AccessKey={KEY}"),
            format!("Endpoint=https://x.example/{KEY};AccessKey={KEY}"),
            format!("Endpoint=https://x.example:{KEY};AccessKey=other"),
        ] {
            let e = refusal(&s);
            assert!(
                !e.contains(KEY) && !e.to_ascii_lowercase().contains(&KEY.to_ascii_lowercase()),
                "{e}"
            );
            assert!(
                ["Endpoint", "AccessKey", "Port", "Key=Value"]
                    .iter()
                    .any(|part| e.contains(part)),
                "names the part: {e}"
            );
        }
        assert!(refusal("Endpoint=http://u:p@host.example;AccessKey=k").contains("user name"));
        assert!(refusal("Endpoint=http://u@host.example;AccessKey=k").contains("user name"));
        assert!(refusal("Endpoint=contoso;AccessKey=k").contains("not a host name"));
        // A single-label host is fine with an explicit scheme (e.g. a container's name).
        assert_eq!(
            ConnectionString::parse("Endpoint=http://emulator:8080;AccessKey=k")
                .unwrap()
                .origin(),
            "http://emulator:8080"
        );
        let c = ConnectionString::parse(&format!("Endpoint=https://x;AccessKey={KEY}")).unwrap();
        assert!(!format!("{c:?} {:?} {}", c.access_key, c.access_key).contains(KEY));
    }

    #[test]
    fn the_service_form_of_a_key() {
        for good in [
            KEY,
            "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=",
            "abcdefghijklmnopqrstuvwxyz0123456789abcdefgh",
        ] {
            assert!(AccessKey::has_service_form(good), "{good}");
        }
        for bad in [
            "",
            "1",
            "k",
            "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJ==",
            "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=x",
            "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWe!A=",
        ] {
            assert!(!AccessKey::has_service_form(bad), "{bad}");
        }
    }

    #[test]
    fn refuses_an_endpoint_that_carries_the_key_once_normalised() {
        // fuzz/connection_string: the host `n-otoso..Gcomps` is kept as `n-otoso..gcomps`, the
        // key itself; `to_secret_string` then wrote a string that `parse` refused.
        // The same when `Port=` completes it.
        for s in [
            "Endpoint=https://n-otoso..Gcomps://-/c;AccessKey=https://n-otoso..gcomps",
            "Endpoint=https://contoso.t;Port=8080;AccessKey=tps://contoso.t:8",
        ] {
            let e = refusal(s);
            assert!(e.contains("it contains the AccessKey"), "{s}: {e}");
            assert!(!e.contains("contoso") && !e.contains("otoso"), "{e}");
        }
    }

    #[test]
    fn refuses_credentials_in_the_endpoint() {
        // fuzz/connection_string, minimised: `p@` made an origin `https://p@abcjk` that
        // `to_secret_string` wrote back as `https://abcjk`.
        for s in [
            "Endpoint=p@ABCJK;Accesskey=A\u{1}\0;",
            "Endpoint=https://user:secret@contoso.webpubsub.azure.com;AccessKey=k",
            "Endpoint=https://:secret@contoso.webpubsub.azure.com;AccessKey=k",
        ] {
            let e = refusal(s);
            assert!(e.contains("user name or password"), "{s}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn refuses_port_0_in_the_endpoint_as_in_port() {
        // fuzz/connection_string, minimised: parsed, but `to_secret_string` wrote `Port=0`.
        // (Without a scheme the single-word host is now refused first, as a pasted key would be.)
        assert!(ConnectionString::parse("Endpoint=nte:0/;AccessKey=ub").is_err());
        let e = refusal("Endpoint=http://nte:0/;AccessKey=ub");
        assert!(e.contains("port 0"), "{e}");
        assert!(
            ConnectionString::parse("Endpoint=http://localhost:0;Port=8080;AccessKey=k").is_err()
        );
    }

    #[test]
    fn refuses_hosts_a_connection_string_cannot_carry() {
        // fuzz/connection_string: U+037E (Greek question mark) maps to `;` under IDNA, so the
        // host `x;y` came back from `to_secret_string` as two segments.
        for s in [
            "Endpoint=https://a\u{37e}b.example;AccessKey=k",
            "Endpoint=https://a=b.example;AccessKey=k",
        ] {
            let e = refusal(s);
            assert!(e.contains("not a DNS name"), "{s}: {e}");
        }
        let ok = ConnectionString::parse("Endpoint=https://B\u{fc}cher_1.example;AccessKey=k");
        assert_eq!(ok.unwrap().host(), "xn--bcher_1-n2a.example");
    }
}
