//! How the AWS connectors reach AWS (shared by `sources/kinesis.rs`, `sinks/kinesis.rs`
//! and `sinks/dynamodb.rs`; used at the edges of the data flow only).
//!
//! Options every AWS connector takes:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `region` | the standard chain (`AWS_REGION`, profile) | e.g. `eu-west-1` (lowercase letters, digits and `-`) |
//! | `endpoint` | AWS's | an emulator or VPC endpoint, e.g. `http://127.0.0.1:4567`; over HTTP only an allow-listed one (`sluice serve --allow-endpoint`), with the SQL's own credentials |
//! | `access_key_id`, `secret_access_key`, `session_token` | the standard chain | static credentials, meant for emulators and tests; in production leave them out and let the chain (env, profile, web identity, ECS/EC2 roles) find them |
//! | `profile` | `AWS_PROFILE` or `default` | the profile of `~/.aws/config` to use (not over HTTP) |
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
use crate::reach::{Deferred, Reach, Service};
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
    /// Why SQL from the network may not use these options (an endpoint not
    /// allowed, …): the connector raises it once it has read all its options.
    pub refused: Deferred,
}

impl AwsConnect {
    /// Takes `region`, `endpoint`, `access_key_id`, `secret_access_key`,
    /// `session_token`, `profile` and `ca` (a path under `file_root` when there is
    /// one: SQL from the network names no file outside the data directory). For SQL
    /// from the network (`reach` restricted) an endpoint must be allow-listed and come
    /// with the SQL's own credentials, and no profile may be picked: the server's own
    /// identity goes only to AWS (or to the endpoint its environment names).
    pub fn from_options(
        o: &mut Options,
        file_root: Option<&PathBuf>,
        reach: &Reach,
    ) -> Result<Self> {
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
        let endpoint = match o.take("endpoint") {
            None => None,
            Some(e) => {
                let parsed =
                    Endpoint::parse(&e.value).map_err(|why| Error::user_at(why, e.position))?;
                Some((parsed, e.position))
            }
        };
        let region = match o.take("region") {
            None => None,
            Some(r) => {
                let v = r.value.trim();
                // The region becomes part of a host name (kinesis.<region>.amazonaws.com):
                // anything but a region's characters could send requests elsewhere.
                let valid = !v.is_empty()
                    && v.len() <= 64
                    && v.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !valid {
                    return Err(Error::user_at(
                        format!(
                            "option 'region' must be an AWS region name such as 'eu-west-1' \
                             (lowercase letters, digits and '-'), got '{v}'"
                        ),
                        r.position,
                    ));
                }
                Some(v.to_string())
            }
        };
        let access_key_id = o.take_string("access_key_id");
        let secret_access_key = o.take_string("secret_access_key");
        let session_token = o.take_string("session_token");
        let profile = o.take("profile");
        if access_key_id.is_some() != secret_access_key.is_some() {
            return Err(Error::user_at(
                "access_key_id and secret_access_key go together",
                at,
            ));
        }
        let mut refused = Deferred::default();
        if reach.restricted {
            refused.keep(restricted(
                reach,
                &endpoint,
                &profile,
                access_key_id.is_some(),
            ))?;
        }
        Ok(AwsConnect {
            region,
            endpoint: endpoint.map(|(e, _)| e.url),
            access_key_id,
            secret_access_key,
            session_token,
            profile: profile.map(|p| p.value),
            ca_pem,
            refused,
        })
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

/// What SQL from the network may not do with AWS options: name an endpoint not
/// allowed, name an allowed one without its own credentials (the server's would go
/// there), or pick one of the server's profiles.
fn restricted(
    reach: &Reach,
    endpoint: &Option<(Endpoint, crate::error::Position)>,
    profile: &Option<crate::sql::options::OptionValue>,
    own_credentials: bool,
) -> Result<()> {
    if let Some(p) = profile {
        return Err(Error::user_at(
            "option 'profile' picks one of this server's AWS identities, which SQL \
             submitted over HTTP may not do: leave it out to use the server's default \
             credentials, or give access_key_id and secret_access_key (SQL files loaded \
             with --queries may name a profile)",
            p.position,
        ));
    }
    if let Some((e, position)) = endpoint {
        reach.check(
            Service::Endpoint,
            "endpoint",
            &e.host,
            e.port,
            e.default_port,
            *position,
        )?;
        if !own_credentials {
            return Err(Error::user_at(
                format!(
                    "option 'endpoint' ({}) needs the SQL's own access_key_id and \
                     secret_access_key when the SQL is submitted over HTTP: the server's own \
                     AWS credentials go only to AWS's endpoints (or to the endpoint the \
                     server's environment names, AWS_ENDPOINT_URL)",
                    e.url
                ),
                *position,
            ));
        }
    }
    Ok(())
}

/// An `endpoint` option, parsed once: what is checked against the allow-list is what
/// the SDK and object_store are given, rebuilt from the parts (`scheme://host[:port]`
/// and the path), so no two URL parsers can read one string two ways.
struct Endpoint {
    url: String,
    host: String,
    port: u16,
    default_port: u16,
}

impl Endpoint {
    fn parse(value: &str) -> std::result::Result<Endpoint, String> {
        let v = value.trim();
        let bad = |why: &str| {
            format!("option 'endpoint' must be an http:// or https:// URL{why}, got '{v}'")
        };
        let url = url::Url::parse(v).map_err(|e| bad(&format!(" ({e})")))?;
        let default_port = match url.scheme() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                " without a user or password (credentials go in access_key_id and secret_access_key)",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad(" without '?' or '#'"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(bad(" with a host")),
        };
        let port = url.port_or_known_default().unwrap_or(default_port);
        // The origin is `scheme://host[:port]` (the default port left out); a path,
        // when there is one, is kept without its trailing '/'.
        let path = url.path().trim_end_matches('/');
        Ok(Endpoint {
            url: format!("{}{path}", url.origin().ascii_serialization()),
            host,
            port,
            default_port,
        })
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::Position;
    use crate::reach::{AllowList, HostPort};

    fn options(pairs: &[(&str, &str)]) -> Options {
        let mut o = Options::new(Position::default());
        for (k, v) in pairs {
            o.insert(k, v.to_string(), Position::default()).unwrap();
        }
        o
    }

    fn network(endpoints: &[&str]) -> Reach {
        Reach {
            restricted: true,
            allow: Arc::new(AllowList {
                endpoints: endpoints
                    .iter()
                    .map(|e| HostPort::parse(e).unwrap())
                    .collect(),
                ..Default::default()
            }),
        }
    }

    /// What the SDK is given is rebuilt from the parsed URL: one reading of it.
    #[test]
    fn endpoints_are_rebuilt_from_their_parts() {
        let e = Endpoint::parse(" http://127.0.0.1:4567/ ").unwrap();
        assert_eq!(
            (e.url.as_str(), e.port, e.default_port),
            ("http://127.0.0.1:4567", 4567, 80)
        );
        let e = Endpoint::parse("HTTPS://Kinesis.Example.COM:443/base/").unwrap();
        assert_eq!(e.url, "https://kinesis.example.com/base");
        assert_eq!((e.host.as_str(), e.port), ("kinesis.example.com", 443));
        // Other spellings of an address come out canonical.
        let e = Endpoint::parse("http://0x7f.1").unwrap();
        assert_eq!(
            (e.url.as_str(), e.host.as_str()),
            ("http://127.0.0.1", "127.0.0.1")
        );
        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!(
            (e.url.as_str(), e.host.as_str()),
            ("http://[::1]:9000", "::1")
        );
        for bad in [
            "ftp://x",
            "127.0.0.1:4567",
            "http://user:pw@x",
            "http://allowed@evil",
            "http://x/?a=b",
            "http://x#f",
            "http://",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sql_from_the_network_keeps_the_servers_identity_with_aws() {
        let check = |reach: &Reach, pairs: &[(&str, &str)]| -> std::result::Result<(), String> {
            let mut o = options(pairs);
            AwsConnect::from_options(&mut o, None, reach)
                .and_then(|c| c.refused.raise())
                .map_err(|e| e.to_string())
        };
        let net = network(&["127.0.0.1:4567"]);
        let own = [("access_key_id", "k"), ("secret_access_key", "s")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v: Vec<(&str, &str)> = own.to_vec();
            v.extend_from_slice(extra);
            v
        };
        // AWS's own endpoints: the server's credentials, or the SQL's.
        assert_eq!(check(&net, &[("region", "eu-west-1")]), Ok(()));
        assert_eq!(check(&net, &own), Ok(()));
        // An allowed endpoint, with the SQL's credentials only.
        let allowed = ("endpoint", "http://127.0.0.1:4567");
        assert_eq!(check(&net, &with(&[allowed])), Ok(()));
        let e = check(&net, &[allowed]).unwrap_err();
        assert!(e.contains("needs the SQL's own access_key_id"), "{e}");
        let e = check(&net, &with(&[("endpoint", "http://127.0.0.1:4568")])).unwrap_err();
        assert!(e.contains("--allow-endpoint 127.0.0.1:4568"), "{e}");
        let e = check(&net, &[("profile", "admin")]).unwrap_err();
        assert!(e.contains("option 'profile'"), "{e}");
        // A region is part of a host name: nothing else gets in.
        let e = check(&net, &[("region", "us-east-1.evil.example#")]).unwrap_err();
        assert!(e.contains("must be an AWS region name"), "{e}");
        // The operator's SQL reaches anything.
        let files = Reach::default();
        assert_eq!(
            check(
                &files,
                &[("endpoint", "http://10.1.2.3:9"), ("profile", "x")]
            ),
            Ok(())
        );
    }
}
