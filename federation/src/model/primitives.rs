//! Single-value types that can only hold valid values: RFC 1123 names, FQDNs,
//! durations, CIDRs, header names, `host:port` addresses and label maps.
//!
//! Each parses from a string (so serde reports the field path when one is
//! bad) and prints back in canonical form.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::FieldErrors;

/// Declares a `String`-backed newtype that validates with `$check` on construction.
macro_rules! string_newtype {
    ($(#[$meta:meta])* $ty:ident, $check:path, example = $example:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String, example = $example)]
        pub struct $ty(String);

        impl $ty {
            /// The canonical string form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                $check(value).map($ty)
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(value: &str) -> Result<Self, String> {
                Self::try_from(value.to_owned())
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// An RFC 1123 DNS label: 1–63 lower-case letters, digits and `-`,
    /// starting and ending with a letter or digit.
    Name,
    check_name,
    example = "production"
);

string_newtype!(
    /// A fully qualified domain name, stored lower-case without the trailing dot.
    Domain,
    check_domain,
    example = "production.app.acme.com"
);

string_newtype!(
    /// An HTTP header name (an RFC 9110 token), stored lower-case.
    HeaderName,
    check_header_name,
    example = "user-agent"
);

string_newtype!(
    /// `host:port` where host is an IP address or a DNS name, e.g. `203.0.113.10:15443`.
    HostPort,
    check_host_port,
    example = "203.0.113.10:15443"
);

fn check_name(value: String) -> Result<String, String> {
    if is_dns_label(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{value:?} is not a valid name: use 1-63 lower-case letters, digits or '-', \
             starting and ending with a letter or digit (RFC 1123)"
        ))
    }
}

/// True if `label` is a lower-case RFC 1123 label.
fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn check_domain(value: String) -> Result<String, String> {
    let lowered = value.to_ascii_lowercase();
    let trimmed = lowered.strip_suffix('.').unwrap_or(&lowered);
    let labels: Vec<&str> = trimmed.split('.').collect();
    let bad = || {
        Err(format!(
            "{value:?} is not a fully qualified domain name: use at least two dot-separated \
             RFC 1123 labels, 253 characters at most"
        ))
    };
    if trimmed.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| is_dns_label(l)) {
        return bad();
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{value:?} is not a domain name: its last label is numeric"
        ));
    }
    Ok(trimmed.to_owned())
}

impl Domain {
    /// True if one of the two domains equals or contains the other
    /// (`a.acme.com` and `x.a.acme.com` overlap; `a.acme.com` and `ba.acme.com` don't).
    pub fn overlaps(&self, other: &Domain) -> bool {
        let (a, b) = (self.as_str(), other.as_str());
        a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
    }

    /// This domain and every parent domain with at least two labels,
    /// e.g. `x.a.acme.com`, `a.acme.com`, `acme.com`.
    pub fn self_and_ancestors(&self) -> Vec<String> {
        let mut out = vec![self.0.clone()];
        let mut rest = self.0.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if !parent.contains('.') {
                break;
            }
            out.push(parent.to_owned());
            rest = parent;
        }
        out
    }
}

fn check_header_name(value: String) -> Result<String, String> {
    const TOKEN_SPECIALS: &[u8] = b"!#$%&'*+-.^_`|~";
    let ok = !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TOKEN_SPECIALS.contains(&b));
    if ok {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(format!("{value:?} is not a valid HTTP header name"))
    }
}

fn check_host_port(value: String) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{value:?} is not host:port: {why}"));
    if let Ok(addr) = value.parse::<std::net::SocketAddr>() {
        if addr.port() == 0 {
            return bad("port must be 1-65535");
        }
        return Ok(addr.to_string());
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return bad("missing ':port'");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad("port must be 1-65535"),
    }
    let host = host.to_ascii_lowercase();
    let host_ok = host.len() <= 253 && host.split('.').all(is_dns_label);
    if !host_ok {
        return bad("host must be an IP address or a DNS name");
    }
    Ok(format!("{host}:{port}"))
}

/// A duration written like `500ms`, `2s`, `1m30s` or `24h`; must be positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "500ms")]
pub struct DurationSpec(Duration);

impl DurationSpec {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Wraps a positive duration.
    pub fn new(d: Duration) -> Option<Self> {
        (!d.is_zero()).then_some(Self(d))
    }
}

impl TryFrom<String> for DurationSpec {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let parsed = humantime::parse_duration(value.trim()).map_err(|e| {
            format!("{value:?} is not a duration such as \"500ms\", \"2s\" or \"1h\": {e}")
        })?;
        Self::new(parsed).ok_or_else(|| format!("{value:?}: duration must be greater than zero"))
    }
}

impl From<DurationSpec> for String {
    fn from(value: DurationSpec) -> String {
        value.to_string()
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// An IPv4 or IPv6 network in CIDR notation, e.g. `10.8.0.0/16`, with host bits zero.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "10.8.0.0/16")]
pub struct Cidr(ipnet::IpNet);

impl Cidr {
    /// The network.
    pub fn net(&self) -> ipnet::IpNet {
        self.0
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let net: ipnet::IpNet = value
            .parse()
            .map_err(|_| format!("{value:?} is not a CIDR such as \"10.8.0.0/16\""))?;
        if net.trunc() != net {
            return Err(format!(
                "{value:?} has host bits set; did you mean \"{}\"?",
                net.trunc()
            ));
        }
        Ok(Self(net))
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        Self::try_from(value.to_owned())
    }
}

impl From<Cidr> for String {
    fn from(value: Cidr) -> String {
        value.0.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Kubernetes-style labels (`region: us-east-1`).
pub type LabelMap = BTreeMap<String, String>;

/// Checks label keys and values with the Kubernetes rules: keys are an optional
/// DNS-subdomain prefix and `/`, then a 1–63 character name; values are at most 63
/// characters; both of alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
pub fn validate_labels(labels: &LabelMap, field: &str, errors: &mut FieldErrors) {
    fn label_part_ok(s: &str, allow_empty: bool) -> bool {
        if s.is_empty() {
            return allow_empty;
        }
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && s.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
    }
    for (key, value) in labels {
        let (prefix, name) = match key.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, key.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
        if !prefix_ok || !label_part_ok(name, false) {
            errors.add(
                format!("{field}.{key}"),
                format!("{key:?} is not a valid label key"),
            );
        }
        if !label_part_ok(value, true) {
            errors.add(
                format!("{field}.{key}"),
                format!("{value:?} is not a valid label value (63 characters at most, alphanumeric, '-', '_', '.')"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc1123() {
        for good in ["a", "web", "east-1", "0abc", &"a".repeat(63)] {
            assert!(Name::from_str(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(64), "ü"] {
            assert!(Name::from_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_are_fqdns_lowercased() {
        assert_eq!(
            Domain::from_str("Production.App.Acme.COM.").map(String::from),
            Ok("production.app.acme.com".into())
        );
        for bad in [
            "acme",
            "a..b.com",
            "-a.com",
            "a.123",
            "a b.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(Domain::from_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domain_overlap_is_by_label() {
        let d = |s: &str| Domain::from_str(s).expect("valid");
        assert!(d("a.acme.com").overlaps(&d("x.a.acme.com")));
        assert!(d("x.a.acme.com").overlaps(&d("a.acme.com")));
        assert!(d("a.acme.com").overlaps(&d("a.acme.com")));
        assert!(!d("a.acme.com").overlaps(&d("ba.acme.com")));
        assert_eq!(
            d("x.a.acme.com").self_and_ancestors(),
            vec!["x.a.acme.com", "a.acme.com", "acme.com"]
        );
    }

    #[test]
    fn durations_parse_and_print() {
        let d = DurationSpec::try_from("500ms".to_string()).expect("valid");
        assert_eq!(d.get(), Duration::from_millis(500));
        assert_eq!(d.to_string(), "500ms");
        assert!(DurationSpec::try_from("0s".to_string()).is_err());
        assert!(DurationSpec::try_from("soon".to_string()).is_err());
    }

    #[test]
    fn cidrs_reject_host_bits() {
        assert!(Cidr::try_from("10.8.0.0/16".to_string()).is_ok());
        assert!(Cidr::try_from("10.8.0.1/16".to_string()).is_err());
        assert!(Cidr::try_from("fd00::/8".to_string()).is_ok());
        assert!(Cidr::try_from("10.8.0.0".to_string()).is_err());
    }

    #[test]
    fn host_ports() {
        assert!(HostPort::from_str("203.0.113.10:15443").is_ok());
        assert!(HostPort::from_str("[2001:db8::1]:15443").is_ok());
        assert!(HostPort::from_str("lb.example.com:443").is_ok());
        assert!(HostPort::from_str("lb.example.com").is_err());
        assert!(HostPort::from_str("1.2.3.4:0").is_err());
        assert!(HostPort::from_str("bad host:80").is_err());
    }

    #[test]
    fn labels() {
        let mut errors = FieldErrors::default();
        let mut labels = LabelMap::new();
        labels.insert("region".into(), "us-east-1".into());
        labels.insert("topology.kubernetes.io/zone".into(), "us-east-1a".into());
        validate_labels(&labels, "labels", &mut errors);
        assert!(errors.is_empty(), "{errors}");
        labels.insert("bad key!".into(), "x".into());
        labels.insert("ok".into(), "-bad".into());
        validate_labels(&labels, "labels", &mut errors);
        assert_eq!(errors.0.len(), 2);
    }
}
