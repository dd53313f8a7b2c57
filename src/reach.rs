//! What SQL submitted over HTTP may reach (a shared helper below `sources/` and
//! `sinks/`, consulted while a connector's options are built, so a CREATE is refused
//! before anything connects): the operator's allow-lists of hosts for AWS-style
//! endpoints, Redis servers and MQTT brokers (`sluice serve --allow-endpoint`,
//! `--allow-redis`, `--allow-mqtt`).
//!
//! SQL the operator wrote (`--queries` files, `sluice run`, `sluice check`) reaches
//! any host; SQL from the network reaches only the hosts listed here, and never has
//! the server's own AWS credentials sent to a host it named (see `aws.rs`). The model
//! as a whole is in docs/api.md, "What SQL over HTTP may reach".
//!
//! **Matching.** An entry is a host with an optional port, written as in a URL:
//! `cache.internal`, `cache.internal:6380`, `10.0.0.7:9000`, `[fd00::7]:1883`. A URL
//! matches an entry when its host is the entry's host (letter case aside) and its port
//! is the entry's, or, for an entry without one, the default port of the URL's scheme
//! (6379 for Redis, 1883 or 8883 for MQTT, 80 or 443 for an endpoint). There are no
//! wildcards and no address ranges, on purpose:
//! - a wildcard over a domain that others can also get names in hands them the
//!   server's traffic: `*.amazonaws.com` includes every load balancer and API gateway
//!   anyone creates, and their owners see every header the server sends;
//! - an address range would have to be checked against the address a name resolves to
//!   when the connection is made, and the client libraries (redis, rumqttc, the AWS
//!   SDK, object_store) resolve names themselves: a name checked while it resolved
//!   inside the range could resolve outside it a moment later (DNS rebinding).
//!
//! So a name is compared as written and an IP address matches only the same address;
//! a URL that spells an allowed host differently (`127.1` for `127.0.0.1`) is refused,
//! which errs on the safe side.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::error::{Error, Position, Result};

/// What kind of host an allow-list is for; each has its own flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `endpoint` of the kinesis and dynamodb connectors and of S3 archives.
    Endpoint,
    /// `url` of the redis sink.
    Redis,
    /// `url` of the mqtt source and sink.
    Mqtt,
}

impl Service {
    /// The `sluice serve` flag that adds to this list.
    pub fn flag(self) -> &'static str {
        match self {
            Service::Endpoint => "--allow-endpoint",
            Service::Redis => "--allow-redis",
            Service::Mqtt => "--allow-mqtt",
        }
    }

    /// The environment variable equivalent to [`Service::flag`] (comma-separated).
    pub fn env(self) -> &'static str {
        match self {
            Service::Endpoint => "SLUICE_ALLOW_ENDPOINT",
            Service::Redis => "SLUICE_ALLOW_REDIS",
            Service::Mqtt => "SLUICE_ALLOW_MQTT",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Service::Endpoint => "endpoints",
            Service::Redis => "Redis servers",
            Service::Mqtt => "MQTT brokers",
        }
    }
}

/// One allow-list entry: a host, and the port when it names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Lowercase; an IP address in its canonical form, IPv6 without brackets.
    host: String,
    port: Option<u16>,
}

impl HostPort {
    /// Parses `host`, `host:port`, `[ipv6]`, `[ipv6]:port` or a bare IPv6 address.
    pub fn parse(entry: &str) -> std::result::Result<HostPort, String> {
        let s = entry.trim();
        let bad = |why: &str| format!("'{s}' is not host[:port]: {why}");
        if s.is_empty() {
            return Err("an empty entry allows nothing; write host[:port]".to_string());
        }
        if s.contains("://") {
            return Err(bad(
                "write the host and port alone, without a scheme (e.g. minio.internal:9000)",
            ));
        }
        if s.contains('*') {
            return Err(bad(
                "wildcards are not supported; list each host (docs/api.md says why)",
            ));
        }
        if s.contains('/') {
            return Err(bad(
                "address ranges are not supported; list each host (docs/api.md says why)",
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("expected ':port'"))?),
            };
            h.parse::<Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in the brackets"))?;
            (h, port)
        } else if s.matches(':').count() > 1 {
            s.parse::<Ipv6Addr>()
                .map_err(|_| bad("several ':' but not an IPv6 address"))?;
            (s, None)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
        {
            return Err(bad("the host may hold letters, digits, '-', '.' and '_'"));
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(bad("the port must be a number from 1 to 65535")),
            },
        };
        Ok(HostPort {
            host: normal_host(host),
            port,
        })
    }

    fn matches(&self, host: &str, port: u16, default_port: u16) -> bool {
        self.host == host && self.port.unwrap_or(default_port) == port
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = bracketed(&self.host);
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => write!(f, "{host}"),
        }
    }
}

/// The hosts the operator allows SQL from the network to reach.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    pub endpoints: Vec<HostPort>,
    pub redis: Vec<HostPort>,
    pub mqtt: Vec<HostPort>,
}

impl AllowList {
    fn of(&self, service: Service) -> &[HostPort] {
        match service {
            Service::Endpoint => &self.endpoints,
            Service::Redis => &self.redis,
            Service::Mqtt => &self.mqtt,
        }
    }
}

/// Where the SQL being checked may connect: anywhere (SQL the operator wrote, the
/// default) or only to the allow-listed hosts (SQL submitted over HTTP).
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// On for SQL submitted over HTTP.
    pub restricted: bool,
    /// The operator's lists; they apply only when `restricted`.
    pub allow: Arc<AllowList>,
}

impl Reach {
    /// Whether the option `option` of the SQL (written at `at`) may make the server
    /// connect to `host:port`; `default_port` is that of the URL's scheme. The error
    /// names the option, the host and the flag that would allow it.
    pub fn check(
        &self,
        service: Service,
        option: &str,
        host: &str,
        port: u16,
        default_port: u16,
        at: Position,
    ) -> Result<()> {
        if !self.restricted {
            return Ok(());
        }
        let host = normal_host(host);
        let allowed = self.allow.of(service);
        if allowed.iter().any(|e| e.matches(&host, port, default_port)) {
            return Ok(());
        }
        let target = format!("{}:{port}", bracketed(&host));
        let listed = if allowed.is_empty() {
            format!("the server allows no {}", service.plural())
        } else {
            format!(
                "the server allows only the {} {}",
                service.plural(),
                allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(Error::user_at(
            format!(
                "option '{option}' names {target}, which SQL submitted over HTTP may not reach: \
                 {listed}. The operator can allow it by starting `sluice serve` with {} {target} \
                 (or {}={target}); SQL files loaded with --queries may reach any host",
                service.flag(),
                service.env(),
            ),
            at,
        ))
    }
}

/// A refusal met while a connector's options are read, raised only once all of them
/// were (after [`crate::sql::Options::finish`]). Raised mid-way, it would stop the
/// option parser before the options after it, which would then be reported as
/// unknown options instead of the refusal.
#[derive(Debug, Clone, Default)]
pub struct Deferred(Option<(String, Option<Position>)>);

impl Deferred {
    /// Keeps the first user error of `checked` (another kind is returned at once).
    pub fn keep(&mut self, checked: Result<()>) -> Result<()> {
        match checked {
            Ok(()) => Ok(()),
            Err(Error::User { message, position }) => {
                self.0.get_or_insert((message, position));
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    /// The refusal kept, if any.
    pub fn raise(&self) -> Result<()> {
        match &self.0 {
            None => Ok(()),
            Some((message, position)) => Err(Error::User {
                message: message.clone(),
                position: *position,
            }),
        }
    }
}

/// A host as compared: without IPv6 brackets, lowercase, IP addresses canonical.
fn normal_host(host: &str) -> String {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    if let Ok(v6) = h.parse::<Ipv6Addr>() {
        return v6.to_string();
    }
    if let Ok(v4) = h.parse::<Ipv4Addr>() {
        return v4.to_string();
    }
    h.to_ascii_lowercase()
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(entries: &[&str]) -> Reach {
        Reach {
            restricted: true,
            allow: Arc::new(AllowList {
                redis: entries
                    .iter()
                    .map(|e| HostPort::parse(e).unwrap())
                    .collect(),
                ..Default::default()
            }),
        }
    }

    fn ok(r: &Reach, host: &str, port: u16) -> bool {
        r.check(Service::Redis, "url", host, port, 6379, Position::default())
            .is_ok()
    }

    #[test]
    fn entries_match_host_and_port_as_written() {
        let r = reach(&["Cache.Internal", "10.0.0.7:6380", "[FD00::7]:7000"]);
        assert!(ok(&r, "cache.internal", 6379));
        assert!(ok(&r, "CACHE.internal", 6379));
        // An entry without a port means the scheme's default port, not any port.
        assert!(!ok(&r, "cache.internal", 6380));
        assert!(ok(&r, "10.0.0.7", 6380));
        assert!(!ok(&r, "10.0.0.7", 6379));
        assert!(ok(&r, "fd00:0::7", 7000));
        assert!(ok(&r, "[fd00::7]", 7000));
        // Other spellings of an address, other names and subdomains are not it.
        assert!(!ok(&r, "10.0.0.70", 6380));
        assert!(!ok(&r, "evil.cache.internal", 6379));
        assert!(!ok(&r, "cache.internal.evil.com", 6379));
        assert!(!ok(&r, "cache.internal.", 6379));
    }

    #[test]
    fn unrestricted_reaches_anything_and_restricted_nothing_by_default() {
        assert!(ok(&Reach::default(), "anywhere", 1));
        let none = Reach {
            restricted: true,
            ..Default::default()
        };
        let e = none
            .check(
                Service::Endpoint,
                "endpoint",
                "127.0.0.1",
                4567,
                80,
                Position { line: 2, column: 7 },
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("2:7: option 'endpoint' names 127.0.0.1:4567"),
            "{e}"
        );
        assert!(e.contains("allows no endpoints"), "{e}");
        assert!(e.contains("--allow-endpoint 127.0.0.1:4567"), "{e}");
        assert!(e.contains("SLUICE_ALLOW_ENDPOINT=127.0.0.1:4567"), "{e}");
        let e = reach(&["a:1", "b"])
            .check(Service::Redis, "url", "::1", 2, 6379, Position::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("names [::1]:2"), "{e}");
        assert!(e.contains("allows only the Redis servers a:1, b"), "{e}");
    }

    #[test]
    fn entries_that_are_not_host_and_port_are_refused() {
        for (entry, why) in [
            ("", "empty"),
            ("http://minio:9000", "without a scheme"),
            ("*.amazonaws.com", "wildcards"),
            ("10.0.0.0/8", "ranges"),
            ("host:0", "port"),
            ("host:http", "port"),
            ("[::1", "unclosed"),
            ("[nothex]:1", "IPv6"),
            ("a:b:c", "IPv6"),
            ("ho st", "letters"),
        ] {
            let e = HostPort::parse(entry).unwrap_err();
            assert!(e.contains(why), "{entry}: {e}");
        }
        assert_eq!(HostPort::parse("::1").unwrap().to_string(), "[::1]");
        assert_eq!(
            HostPort::parse(" Minio.Internal:9000 ")
                .unwrap()
                .to_string(),
            "minio.internal:9000"
        );
    }
}
