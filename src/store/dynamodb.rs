//! DynamoDB backend (see the cloud-targets issue).
