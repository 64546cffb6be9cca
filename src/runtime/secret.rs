//! The connection string from AWS Secrets Manager, when only its ARN is configured.

use std::time::Duration;

use crate::config::{ConfigError, ServeArgs};

/// Done once per process: a Lambda container pays one `GetSecretValue` at cold start, and the
/// key never sits in the function's plain environment or the CloudFormation template.
pub async fn resolve(args: &mut ServeArgs) -> Result<(), ConfigError> {
    let Some(arn) = args
        .connection_string_secret_arn
        .clone()
        .filter(|a| !a.is_empty())
    else {
        return Ok(());
    };
    if args.connection_string.is_some() {
        return Ok(());
    }
    let fail = |reason: String| ConfigError {
        var: "WEBPUBSUB_CONNECTION_STRING_SECRET_ARN",
        reason,
    };
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(5))
        .build();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await;
    let out = aws_sdk_secretsmanager::Client::new(&sdk)
        .get_secret_value()
        .secret_id(&arn)
        .send()
        .await
        .map_err(|e| {
            fail(format!(
                "cannot read the secret: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
            ))
        })?;
    let value = out
        .secret_string()
        .ok_or_else(|| fail("the secret has no string value".into()))?;
    args.connection_string = Some(value.trim().to_string());
    args.connection_string_from = Some("WEBPUBSUB_CONNECTION_STRING_SECRET_ARN");
    Ok(())
}
