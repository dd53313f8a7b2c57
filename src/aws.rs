//! How the AWS connectors reach AWS (shared by `sources/kinesis.rs`, `sinks/kinesis.rs`
//! and `sinks/dynamodb.rs`; used at the edges of the data flow only).
//!
//! Options every AWS connector takes:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `region` | the standard chain (`AWS_REGION`, profile) | e.g. `eu-west-1` |
//! | `endpoint` | AWS's | an emulator or VPC endpoint, e.g. `http://127.0.0.1:4567` |
//! | `access_key_id`, `secret_access_key`, `session_token` | the standard chain | static credentials, meant for emulators and tests; in production leave them out and let the chain (env, profile, web identity, ECS/EC2 roles) find them |
//! | `profile` | `AWS_PROFILE` or `default` | the profile of `~/.aws/config` to use |
//! | `ca` | the system's roots | a PEM file of certificates to trust besides the system's roots, for an endpoint with a private CA (relative to the data directory for SQL sent over HTTP) |
//!
//! The HTTP client is hyper with rustls on the `ring` provider (the one the MQTT
//! connectors use), built here because the SDK's default client would pull aws-lc-rs.
//! Over `https://` it offers HTTP/2 (ALPN), which enhanced fan-out's SubscribeToShard
//! needs; an `http://` endpoint speaks HTTP/1.1 only.
//! The SDK's own retries are off (one attempt per call): every connector retries in
//! its own loop, with its own backoff, and reports each failure in its health, so an
//! operator sees "retrying: … (attempt 7)" instead of a call silently taking minutes.

use std::path::PathBuf;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::config::Credentials;
use aws_smithy_http_client::tls;

use crate::error::{Error, Result};
use crate::sql::Options;

/// The connection options of an AWS connector, taken at CREATE time.
#[derive(Debug, Clone, Default)]
pub struct AwsConnect {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub profile: Option<String>,
    /// `ca`: PEM certificates to trust besides the system's roots, read at CREATE.
    pub ca_pem: Option<Vec<u8>>,
}

impl AwsConnect {
    /// Takes `region`, `endpoint`, `access_key_id`, `secret_access_key`,
    /// `session_token`, `profile` and `ca` (a path under `file_root` when there is
    /// one: SQL from the network names no file outside the data directory).
    pub fn from_options(o: &mut Options, file_root: Option<&PathBuf>) -> Result<Self> {
        let at = o.position;
        let ca_pem = match o.take("ca") {
            None => None,
            Some(ca) => {
                let path = crate::sources::resolve_path(ca.value.trim(), file_root)
                    .map_err(|e| Error::user_at(e.to_string(), ca.position))?;
                let pem = std::fs::read(&path).map_err(|e| {
                    Error::user_at(
                        format!("option 'ca': cannot read '{}': {e}", path.display()),
                        ca.position,
                    )
                })?;
                // The HTTP client panics on a certificate it cannot use: check them
                // the way it will load them, and say which file is wrong.
                check_certificates(&pem).map_err(|why| {
                    Error::user_at(
                        format!("option 'ca': '{}': {why}", path.display()),
                        ca.position,
                    )
                })?;
                Some(pem)
            }
        };
        let endpoint = o.take("endpoint");
        if let Some(e) = &endpoint {
            let v = e.value.trim();
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(Error::user_at(
                    format!("option 'endpoint' must be an http:// or https:// URL, got '{v}'"),
                    e.position,
                ));
            }
        }
        let c = AwsConnect {
            region: o.take_string("region").map(|r| r.trim().to_string()),
            endpoint: endpoint.map(|e| e.value.trim().trim_end_matches('/').to_string()),
            access_key_id: o.take_string("access_key_id"),
            secret_access_key: o.take_string("secret_access_key"),
            session_token: o.take_string("session_token"),
            profile: o.take_string("profile"),
            ca_pem,
        };
        if c.access_key_id.is_some() != c.secret_access_key.is_some() {
            return Err(Error::user_at(
                "access_key_id and secret_access_key go together",
                at,
            ));
        }
        Ok(c)
    }

    /// The SDK configuration: resolves region and credentials (the chain may read
    /// files and, on EC2/ECS, ask the metadata service).
    pub async fn sdk_config(&self) -> SdkConfig {
        let mut trust = tls::TrustStore::default();
        if let Some(pem) = &self.ca_pem {
            trust = trust.with_pem_certificate(pem.clone());
        }
        let mut http = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ));
        if let Ok(ctx) = tls::TlsContext::builder().with_trust_store(trust).build() {
            http = http.tls_context(ctx);
        }
        let http = http.build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            // Without a bound, a black-holed endpoint holds a call for minutes.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(p) = &self.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &self.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &self.endpoint {
            loader = loader.endpoint_url(e);
        }
        if let (Some(k), Some(s)) = (&self.access_key_id, &self.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                k,
                s,
                self.session_token.clone(),
                None,
                "sluice-options",
            ));
        }
        loader.load().await
    }

    /// Where requests go, for logs and errors.
    pub fn describe(&self) -> String {
        match (&self.endpoint, &self.region) {
            (Some(e), _) => e.clone(),
            (None, Some(r)) => format!("AWS {r}"),
            (None, None) => "AWS (region from the environment)".to_string(),
        }
    }
}

/// Whether `pem` holds at least one certificate, all usable as trust anchors.
fn check_certificates(pem: &[u8]) -> std::result::Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not PEM certificates ({e})"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate cannot be a trust anchor ({e})"))?;
    }
    if roots.is_empty() {
        return Err("no PEM certificate in it".to_string());
    }
    Ok(())
}

/// An SDK error as one line for an operator: the service's error code and message
/// when there is one, else the transport's reason (the SDK's `Display` says only
/// "service error").
pub fn describe_error<E, R>(e: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_sdk_kinesis::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kinesis::error::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => err.to_string(),
            }
        }
        other => {
            // The chain of sources carries the useful part (connection refused, …).
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s
        }
    }
}

/// The error code of a service error (`ProvisionedThroughputExceededException`, …).
pub fn error_code<E, R>(e: &aws_sdk_kinesis::error::SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata,
{
    match e {
        aws_sdk_kinesis::error::SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// Whether an error needs someone to act before a retry can succeed (bad input, a
/// missing permission, unknown credentials): sinks fail on these instead of retrying.
pub fn needs_operator(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ValidationException"
                | "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidArgumentException"
        )
    )
}
