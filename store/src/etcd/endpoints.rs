//! `etcd://HOST:PORT[,HOST:PORT...]` store URLs, as given to `--store`.

use crate::StoreError;

/// The URL scheme naming an etcd cluster.
pub const SCHEME: &str = "etcd://";

/// etcd's registered client port, used when an endpoint names none.
pub const DEFAULT_CLIENT_PORT: u16 = 2379;

/// The endpoints of an `etcd://HOST:PORT[,HOST:PORT...]` URL, as `HOST:PORT`
/// strings ready for [`EtcdStore::connect`](super::EtcdStore::connect).
///
/// - `HOST` is a DNS name, an IPv4 address or a bracketed IPv6 address
///   (`[::1]:2379`); `:PORT` may be left out for etcd's default client port
///   2379.
/// - One trailing `/` is accepted; any other path, a query, user info or an
///   empty endpoint is [`StoreError::Invalid`], naming the offending part.
/// - Connections are plain-text gRPC: TLS endpoints are not supported yet.
pub fn parse_etcd_url(url: &str) -> Result<Vec<String>, StoreError> {
    let invalid = |detail: String| {
        StoreError::Invalid(format!(
            "store URL {url:?}: {detail}; expected etcd://HOST:PORT[,HOST:PORT...], e.g. etcd://127.0.0.1:2379"
        ))
    };
    let Some(rest) = url.strip_prefix(SCHEME) else {
        if url.starts_with("etcds://") || url.starts_with("https://") {
            return Err(invalid("TLS connections to etcd are not supported yet".to_owned()));
        }
        return Err(invalid("the scheme must be etcd://".to_owned()));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if let Some(at) = rest.find(['/', '?', '#', '@']) {
        return Err(invalid(format!("unexpected {:?}: only endpoints may follow etcd://", &rest[at..])));
    }
    let mut endpoints = Vec::new();
    for (index, endpoint) in rest.split(',').enumerate() {
        let endpoint = endpoint.trim();
        let parsed = parse_endpoint(endpoint).map_err(|detail| invalid(format!("endpoint {}: {detail}", index + 1)))?;
        if endpoints.contains(&parsed) {
            return Err(invalid(format!("endpoint {parsed} is given twice")));
        }
        endpoints.push(parsed);
    }
    Ok(endpoints)
}

/// One `HOST[:PORT]`, normalised to `HOST:PORT`.
fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    if endpoint.is_empty() {
        return Err("empty (is there a stray comma?)".to_owned());
    }
    let (host, port) = if let Some(bracketed) = endpoint.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err(format!("{endpoint:?} opens an IPv6 address with '[' but never closes it"));
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{address:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| format!("{endpoint:?}: expected ':PORT' after ']'"))?),
        };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = match endpoint.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (endpoint, None),
        };
        if host.contains(':') || port.is_some_and(|port| port.contains(':')) {
            return Err(format!("{endpoint:?}: write an IPv6 address in brackets, e.g. [::1]:2379"));
        }
        if host.is_empty() {
            return Err(format!("{endpoint:?} has no host"));
        }
        if let Some(bad) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
            return Err(format!("host {host:?} contains {bad:?}"));
        }
        (host.to_owned(), port)
    };
    let port = match port {
        None => DEFAULT_CLIENT_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port {port:?} is not a number from 1 to 65535")),
            Ok(port) => port,
        },
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> Vec<String> {
        parse_etcd_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn rejected(url: &str) -> String {
        match parse_etcd_url(url) {
            Err(StoreError::Invalid(message)) => message,
            other => panic!("{url}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn one_endpoint() {
        assert_eq!(parsed("etcd://127.0.0.1:2379"), ["127.0.0.1:2379"]);
        assert_eq!(parsed("etcd://etcd.mesh-system.svc:32379/"), ["etcd.mesh-system.svc:32379"]);
    }

    #[test]
    fn several_endpoints_keep_their_order() {
        assert_eq!(
            parsed("etcd://10.0.0.3:2379,10.0.0.1:2379, etcd-2:2381"),
            ["10.0.0.3:2379", "10.0.0.1:2379", "etcd-2:2381"]
        );
    }

    #[test]
    fn a_missing_port_is_the_default_client_port() {
        assert_eq!(parsed("etcd://localhost"), ["localhost:2379"]);
        assert_eq!(parsed("etcd://[::1]"), ["[::1]:2379"]);
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(parsed("etcd://[::1]:2379,[fd00::7]:12379"), ["[::1]:2379", "[fd00::7]:12379"]);
        assert!(rejected("etcd://::1:2379").contains("brackets"));
        assert!(rejected("etcd://[::1:2379").contains("never closes"));
        assert!(rejected("etcd://[not-v6]:2379").contains("not an IPv6 address"));
        assert!(rejected("etcd://[::1]2379").contains("':PORT'"));
    }

    #[test]
    fn malformed_urls_name_what_is_wrong() {
        assert!(rejected("http://127.0.0.1:2379").contains("scheme must be etcd://"));
        assert!(rejected("127.0.0.1:2379").contains("scheme must be etcd://"));
        assert!(rejected("etcds://127.0.0.1:2379").contains("TLS"));
        assert!(rejected("etcd://").contains("endpoint 1: empty"));
        assert!(rejected("etcd://a:1,,b:2").contains("endpoint 2: empty"));
        assert!(rejected("etcd://a:1,").contains("endpoint 2: empty"));
        assert!(rejected("etcd://:2379").contains("no host"));
        assert!(rejected("etcd://a:http").contains("port \"http\""));
        assert!(rejected("etcd://a:0").contains("port \"0\""));
        assert!(rejected("etcd://a:65536").contains("port \"65536\""));
        assert!(rejected("etcd://a:1/meshplane").contains("\"/meshplane\""));
        assert!(rejected("etcd://user@a:1").contains("\"@a:1\""));
        assert!(rejected("etcd://a:1?x=y").contains("\"?x=y\""));
        assert!(rejected("etcd://a b:1").contains("' '"));
        assert!(rejected("etcd://a:1,a:1").contains("given twice"));
    }

    #[test]
    fn the_message_shows_the_expected_form() {
        assert!(rejected("etcd://").contains("etcd://HOST:PORT[,HOST:PORT...]"));
    }
}
