//! Value checks on parsed objects, as Istio's validation webhook would make
//! them. An error rejects the object (the previous good version, if any, keeps
//! being served); a warning is reported and the object is applied.

use std::net::{IpAddr, SocketAddr};

use crate::duration::parse_duration;
use crate::k8s::{IntOrString, Service};
use crate::networking::{
    Destination, DestinationRule, HttpRoute, LoadBalancerSettings, ServiceEntry, Sidecar, StringMatch, VirtualService,
    WorkloadEntry,
};
use crate::object::MeshObject;
use crate::parse::Severity;

/// One problem with a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub field: String,
    pub message: String,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Finding { severity: Severity::Error, field: field.into(), message: message.into() });
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Finding { severity: Severity::Warning, field: field.into(), message: message.into() });
    }
}

/// Check an object's values.
pub fn validate(object: &MeshObject) -> Vec<Finding> {
    let mut f = Findings::default();
    match object {
        MeshObject::Service(s) => service(s, &mut f),
        MeshObject::VirtualService(vs) => virtual_service(vs, &mut f),
        MeshObject::DestinationRule(dr) => destination_rule(dr, &mut f),
        MeshObject::Sidecar(sc) => sidecar(sc, &mut f),
        MeshObject::ServiceEntry(se) => service_entry(se, &mut f),
        MeshObject::WorkloadEntry(we) => workload_entry(we, &mut f),
        _ => {}
    }
    f.0
}

fn service(s: &Service, f: &mut Findings) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, port) in s.spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if port.port == 0 {
            f.error(format!("{at}.port"), "port must be between 1 and 65535");
        }
        if !seen.insert(port.port) {
            f.error(format!("{at}.port"), format!("port {} is listed twice", port.port));
        }
        if let Some(IntOrString::Int(n)) = port.target_port
            && !(1..=65535).contains(&n)
        {
            f.error(format!("{at}.targetPort"), "targetPort must be between 1 and 65535");
        }
    }
    if let Some(ip) = &s.spec.cluster_ip
        && ip != "None"
        && !ip.is_empty()
        && ip.parse::<IpAddr>().is_err()
    {
        f.error("spec.clusterIP", format!("{ip:?} is not an IP address (or None)"));
    }
}

fn virtual_service(vs: &VirtualService, f: &mut Findings) {
    let spec = &vs.spec;
    if spec.hosts.is_empty() {
        f.error(
            "spec.hosts",
            "a VirtualService needs at least one host (delegate VirtualServices are not supported yet)",
        );
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        hostname(host, &format!("spec.hosts[{i}]"), true, f);
    }
    for (i, route) in spec.http.iter().enumerate() {
        http_route(route, &format!("spec.http[{i}]"), f);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        let at = format!("spec.tcp[{i}]");
        if route.route.is_empty() {
            f.error(format!("{at}.route"), "a TCP route needs at least one destination");
        }
        weights(route.route.iter().map(|d| d.weight), &format!("{at}.route"), f);
        for (j, d) in route.route.iter().enumerate() {
            destination(&d.destination, &format!("{at}.route[{j}].destination"), f);
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() {
        f.warn("spec", "the VirtualService has no http or tcp routes; it has no effect");
    }
}

fn http_route(route: &HttpRoute, at: &str, f: &mut Findings) {
    match (route.route.is_empty(), route.redirect.is_some()) {
        (true, false) => f.error(format!("{at}.route"), "an HTTP route needs a route or a redirect"),
        (false, true) => f.error(format!("{at}.redirect"), "an HTTP route cannot have both route and redirect"),
        _ => {}
    }
    if route.redirect.is_some() && route.rewrite.is_some() {
        f.error(format!("{at}.rewrite"), "an HTTP route cannot have both rewrite and redirect");
    }
    weights(route.route.iter().map(|d| d.weight), &format!("{at}.route"), f);
    for (j, d) in route.route.iter().enumerate() {
        destination(&d.destination, &format!("{at}.route[{j}].destination"), f);
    }
    for (j, m) in route.matches.iter().enumerate() {
        let mat = format!("{at}.match[{j}]");
        for (name, sm) in [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)] {
            if let Some(sm) = sm {
                string_match(sm, &format!("{mat}.{name}"), f);
            }
        }
        for (maps, label) in
            [(&m.headers, "headers"), (&m.without_headers, "withoutHeaders"), (&m.query_params, "queryParams")]
        {
            for (key, sm) in maps {
                if key.is_empty() {
                    f.error(format!("{mat}.{label}"), "header and parameter names cannot be empty");
                }
                string_match(sm, &format!("{mat}.{label}.{key}"), f);
            }
        }
        if let Some(port) = m.port
            && !(1..=65535).contains(&port)
        {
            f.error(format!("{mat}.port"), "port must be between 1 and 65535");
        }
    }
    if let Some(t) = &route.timeout
        && let Err(e) = parse_duration(t)
    {
        f.error(format!("{at}.timeout"), e);
    }
    if let Some(r) = &route.retries {
        if r.attempts < 0 {
            f.error(format!("{at}.retries.attempts"), "attempts cannot be negative");
        }
        if let Some(t) = &r.per_try_timeout
            && let Err(e) = parse_duration(t)
        {
            f.error(format!("{at}.retries.perTryTimeout"), e);
        }
        if let Some(on) = &r.retry_on {
            for cond in on.split(',').map(str::trim) {
                if cond.is_empty() {
                    f.error(format!("{at}.retries.retryOn"), "retryOn has an empty condition");
                } else if !cond.chars().all(|c| c.is_ascii_digit()) && !RETRY_ON.contains(&cond) {
                    f.error(format!("{at}.retries.retryOn"), format!("{cond:?} is not a retry condition; use Envoy's names (5xx, gateway-error, connect-failure, ...) or status codes"));
                }
            }
        }
    }
    if let Some(redirect) = &route.redirect {
        if let Some(code) = redirect.redirect_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            f.error(
                format!("{at}.redirect.redirectCode"),
                format!("{code} is not a redirect code (301, 302, 303, 307, 308)"),
            );
        }
        if let Some(d) = &redirect.derive_port
            && !["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"].contains(&d.as_str())
        {
            f.error(
                format!("{at}.redirect.derivePort"),
                "derivePort must be FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT",
            );
        }
        if redirect.port.is_some() && redirect.derive_port.is_some() {
            f.error(format!("{at}.redirect"), "set port or derivePort, not both");
        }
    }
    if let Some(rw) = &route.rewrite {
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            f.error(format!("{at}.rewrite"), "set uri or uriRegexRewrite, not both");
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            regex(&rr.pattern, &format!("{at}.rewrite.uriRegexRewrite.match"), f);
        }
    }
}

/// Envoy's `retry_on` conditions (router and gRPC).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn weights(weights: impl Iterator<Item = Option<i64>>, at: &str, f: &mut Findings) {
    let weights: Vec<Option<i64>> = weights.collect();
    if weights.iter().any(|w| w.is_some_and(|w| w < 0)) {
        f.error(at, "weights cannot be negative");
    }
    if weights.len() > 1 && weights.iter().map(|w| w.unwrap_or(0)).sum::<i64>() == 0 {
        f.error(at, "total destination weight is 0; give at least one destination a weight");
    }
}

fn destination(d: &Destination, at: &str, f: &mut Findings) {
    if d.host.is_empty() {
        f.error(format!("{at}.host"), "a destination needs a host");
    } else {
        hostname(&d.host, &format!("{at}.host"), false, f);
    }
    if let Some(p) = &d.port
        && !(1..=65535).contains(&p.number)
    {
        f.error(format!("{at}.port.number"), "port must be between 1 and 65535");
    }
    if d.subset.as_deref() == Some("") {
        f.error(format!("{at}.subset"), "subset cannot be empty; leave it out to use every endpoint");
    }
}

fn string_match(sm: &StringMatch, at: &str, f: &mut Findings) {
    match sm.kind() {
        None => f.error(at, "set only one of exact, prefix or regex"),
        Some(crate::networking::StringMatchKind::Regex(r)) => regex(r, &format!("{at}.regex"), f),
        Some(_) => {}
    }
}

fn regex(pattern: &str, at: &str, f: &mut Findings) {
    if let Err(e) = regex::Regex::new(pattern) {
        f.error(at, format!("invalid regular expression (RE2 syntax): {e}"));
    }
}

/// Hostnames: DNS names, optionally with a leading `*.` (or `*` alone).
fn hostname(host: &str, at: &str, allow_wildcard: bool, f: &mut Findings) {
    if host == "*" {
        if !allow_wildcard {
            f.error(at, "a destination host cannot be *");
        }
        return;
    }
    let name = host.strip_prefix("*.").filter(|_| allow_wildcard).unwrap_or(host);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !ok {
        f.error(at, format!("{host:?} is not a valid hostname"));
    }
}

fn destination_rule(dr: &DestinationRule, f: &mut Findings) {
    let spec = &dr.spec;
    if spec.host.is_empty() {
        f.error("spec.host", "a DestinationRule needs a host");
    } else {
        hostname(&spec.host, "spec.host", true, f);
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        if subset.name.is_empty() {
            f.error(format!("spec.subsets[{i}].name"), "every subset needs a name");
        } else if !names.insert(&subset.name) {
            f.error(format!("spec.subsets[{i}].name"), format!("subset {:?} is defined twice", subset.name));
        }
        if let Some(tp) = &subset.traffic_policy
            && let Some(lb) = &tp.load_balancer
        {
            load_balancer(lb, &format!("spec.subsets[{i}].trafficPolicy.loadBalancer"), f);
        }
    }
    if let Some(tp) = &spec.traffic_policy {
        if let Some(lb) = &tp.load_balancer {
            load_balancer(lb, "spec.trafficPolicy.loadBalancer", f);
        }
        for (i, p) in tp.port_level_settings.iter().enumerate() {
            if p.port.is_none() {
                f.error(format!("spec.trafficPolicy.portLevelSettings[{i}].port"), "port-level settings need a port");
            }
            if let Some(lb) = &p.load_balancer {
                load_balancer(lb, &format!("spec.trafficPolicy.portLevelSettings[{i}].loadBalancer"), f);
            }
        }
    }
}

fn load_balancer(lb: &LoadBalancerSettings, at: &str, f: &mut Findings) {
    if let Some(simple) = &lb.simple
        && !["UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN"]
            .contains(&simple.as_str())
    {
        f.error(
            format!("{at}.simple"),
            format!("{simple:?} is not a load balancer (ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH)"),
        );
    }
}

fn capture_mode(mode: &Option<String>, at: &str, f: &mut Findings) {
    if let Some(m) = mode
        && !["DEFAULT", "IPTABLES", "NONE"].contains(&m.as_str())
    {
        f.error(at, format!("{m:?} is not a capture mode (DEFAULT, IPTABLES, NONE)"));
    }
}

fn bind(bind: &Option<String>, at: &str, f: &mut Findings) {
    if let Some(b) = bind
        && b.parse::<IpAddr>().is_err()
        && !b.starts_with("unix://")
    {
        f.error(at, format!("{b:?} is not an IP address or unix:// path"));
    }
}

fn sidecar(sc: &Sidecar, f: &mut Findings) {
    for (i, l) in sc.spec.egress.iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        if l.hosts.is_empty() {
            f.error(format!("{at}.hosts"), "an egress listener needs hosts, e.g. ./* or istio-system/*");
        }
        for (j, h) in l.hosts.iter().enumerate() {
            let Some((ns, host)) = h.split_once('/') else {
                f.error(
                    format!("{at}.hosts[{j}]"),
                    format!("{h:?} must be namespace/host, e.g. ./* or */reviews.shop.svc.cluster.local"),
                );
                continue;
            };
            if ns.is_empty() || host.is_empty() {
                f.error(format!("{at}.hosts[{j}]"), format!("{h:?} must be namespace/host"));
            } else if host != "*" {
                hostname(host, &format!("{at}.hosts[{j}]"), true, f);
            }
        }
        capture_mode(&l.capture_mode, &format!("{at}.captureMode"), f);
        bind(&l.bind, &format!("{at}.bind"), f);
        if let Some(p) = &l.port
            && !(1..=65535).contains(&p.number)
        {
            f.error(format!("{at}.port.number"), "port must be between 1 and 65535");
        }
    }
    for (i, l) in sc.spec.ingress.iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        if !(1..=65535).contains(&l.port.number) {
            f.error(format!("{at}.port.number"), "port must be between 1 and 65535");
        }
        capture_mode(&l.capture_mode, &format!("{at}.captureMode"), f);
        bind(&l.bind, &format!("{at}.bind"), f);
        if let Some(ep) = &l.default_endpoint
            && !ep.starts_with("unix://")
        {
            let ok = ep.parse::<SocketAddr>().is_ok()
                || ep.rsplit_once(':').is_some_and(|(h, p)| h == "0.0.0.0" && p.parse::<u16>().is_ok());
            if !ok {
                f.error(
                    format!("{at}.defaultEndpoint"),
                    format!("{ep:?} must be IP:PORT (e.g. 127.0.0.1:8080) or unix:///path"),
                );
            }
        }
    }
    if let Some(p) = &sc.spec.outbound_traffic_policy
        && !["ALLOW_ANY", "REGISTRY_ONLY"].contains(&p.mode.as_str())
    {
        f.error("spec.outboundTrafficPolicy.mode", format!("{:?} is not ALLOW_ANY or REGISTRY_ONLY", p.mode));
    }
}

fn service_entry(se: &ServiceEntry, f: &mut Findings) {
    let spec = &se.spec;
    if spec.hosts.is_empty() {
        f.error("spec.hosts", "a ServiceEntry needs at least one host");
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        hostname(h, &format!("spec.hosts[{i}]"), true, f);
    }
    if spec.ports.is_empty() {
        f.error("spec.ports", "a ServiceEntry needs at least one port");
    }
    for (i, p) in spec.ports.iter().enumerate() {
        if !(1..=65535).contains(&p.number) {
            f.error(format!("spec.ports[{i}].number"), "port must be between 1 and 65535");
        }
    }
    let resolution = spec.resolution.as_deref().unwrap_or("NONE");
    if !["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"].contains(&resolution) {
        f.error("spec.resolution", format!("{resolution:?} is not NONE, STATIC, DNS or DNS_ROUND_ROBIN"));
    }
    if let Some(l) = &spec.location
        && !["MESH_EXTERNAL", "MESH_INTERNAL"].contains(&l.as_str())
    {
        f.error("spec.location", format!("{l:?} is not MESH_EXTERNAL or MESH_INTERNAL"));
    }
    if !spec.endpoints.is_empty() && spec.workload_selector.is_some() {
        f.error("spec.workloadSelector", "set endpoints or workloadSelector, not both");
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        if resolution == "STATIC" && ep.address.parse::<IpAddr>().is_err() && !ep.address.starts_with("unix://") {
            f.error(
                format!("spec.endpoints[{i}].address"),
                format!("{:?}: STATIC resolution needs IP addresses", ep.address),
            );
        }
        if ep.address.is_empty() {
            f.error(format!("spec.endpoints[{i}].address"), "an endpoint needs an address");
        }
    }
    if resolution == "STATIC" && spec.endpoints.is_empty() && spec.workload_selector.is_none() {
        f.warn(
            "spec.endpoints",
            "STATIC resolution with no endpoints and no workloadSelector: calls will fail with no healthy upstream",
        );
    }
}

fn workload_entry(we: &WorkloadEntry, f: &mut Findings) {
    if we.spec.address.is_empty() {
        f.error("spec.address", "a WorkloadEntry needs an address");
    }
    for (name, port) in &we.spec.ports {
        if !(1..=65535).contains(port) {
            f.error(format!("spec.ports.{name}"), "port must be between 1 and 65535");
        }
    }
}
