//! Hub names: the service's rule, checked wherever a hub enters (configuration, client URLs).

/// A hub name starts with a letter, then up to 127 of `A-Z a-z 0-9 _ ` , . [ ]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a hub name (a letter, then up to 127 of A-Z a-z 0-9 _ ` , . [ ])")]
pub struct HubError(pub String);

pub fn validate_hub(hub: &str) -> Result<(), HubError> {
    let mut bytes = hub.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    let rest_ok =
        hub.len() <= 128 && bytes.all(|b| b.is_ascii_alphanumeric() || b"_`,.[]".contains(&b));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(HubError(hub.chars().take(140).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_rules() {
        for ok in ["chat", "a", "Hub_1.x[`,]", &format!("h{}", "x".repeat(127))] {
            assert_eq!(validate_hub(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1hub",
            "_x",
            "a b",
            "a/b",
            &format!("h{}", "x".repeat(128)),
        ] {
            assert!(validate_hub(bad).is_err(), "{bad}");
        }
    }
}
