//! Logging: `tracing` to stderr, JSON for a log stream, compact for a person.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{log_filter, ConfigError, LogFormat};

/// `dev` speaks to a person through its own one-line-per-webhook printer, so the structured
/// log stays at warnings unless `RUST_LOG` asks for more.
pub fn init(format: LogFormat, dev: bool) -> Result<(), ConfigError> {
    let directives = log_filter()?.unwrap_or_else(|| if dev { "warn" } else { "info" }.into());
    let filter = filter(&directives)?;
    // Colour codes only for a person at a terminal: in a pipe, a file or a log collector they
    // are noise in every line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // try_init: a test or an embedding program may have installed a subscriber already.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    Ok(())
}

/// Strict: a directive that does not parse is an error, not silently dropped (which would leave
/// a filter that lets nothing through).
fn filter(directives: &str) -> Result<EnvFilter, ConfigError> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| ConfigError {
            var: "RUST_LOG",
            reason: format!("not a log filter: {e}"),
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rust_log_is_parsed_strictly() {
        for good in ["info", "warn,hubhook=debug", "hubhook::http=trace"] {
            assert!(super::filter(good).is_ok(), "{good}");
        }
        for bad in ["info,hubhook=loud", "=", "hubhook[", "[{x}"] {
            let e = super::filter(bad).unwrap_err();
            assert!(e.to_string().starts_with("RUST_LOG: "), "{e}");
        }
    }
}
