//! What a proxy sees: its Sidecar, the services and VirtualServices each of
//! its egress listeners imports, and the DestinationRule that applies to each
//! destination. Istio's rules (see `shared/istio-semantics.md`): VS-01..VS-04,
//! DR-01..DR-04, SC-01, SC-03.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshplane_model::meta::labels_match;
use meshplane_model::networking::{
    DestinationRule, IstioEgressListener, Sidecar, SidecarPort, Subset, TrafficPolicy, VirtualService,
};

use crate::snapshot::{DOMAIN_SUFFIX, MeshSnapshot, ROOT_NAMESPACE, ServiceModel, exported_to};

/// Expand a single-label host relative to the namespace of the object that
/// names it (VS-01): `reviews` in `shop` is `reviews.shop.svc.cluster.local`.
/// Dotted names, `*` and wildcards are taken literally.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_string()
    } else {
        format!("{host}.{namespace}.{DOMAIN_SUFFIX}")
    }
}

/// Whether a host pattern (`*`, `*.suffix`, or exact) matches a hostname.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern == host,
    }
}

/// How specific a host pattern is: exact beats any wildcard; longer wildcards beat shorter.
fn specificity(pattern: &str) -> (bool, usize) {
    (!pattern.contains('*'), pattern.len())
}

/// One egress listener of the proxy's Sidecar (or the implicit catch-all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressScope {
    pub port: Option<SidecarPort>,
    pub bind: Option<String>,
    /// captureMode NONE: the listener binds a real address.
    pub capture_none: bool,
    /// `(namespace selector, host pattern)` pairs.
    hosts: Vec<(String, String)>,
}

impl EgressScope {
    fn from_listener(l: &IstioEgressListener) -> EgressScope {
        EgressScope {
            port: l.port.clone(),
            bind: l.bind.clone(),
            capture_none: l.capture_mode.as_deref() == Some("NONE"),
            hosts: l
                .hosts
                .iter()
                .filter_map(|h| h.split_once('/'))
                .map(|(ns, host)| (ns.to_string(), host.to_string()))
                .collect(),
        }
    }

    fn everything() -> EgressScope {
        EgressScope { port: None, bind: None, capture_none: false, hosts: vec![("*".into(), "*".into())] }
    }

    /// Whether `host` in `namespace` is imported, for a proxy in `proxy_ns`.
    pub fn imports(&self, namespace: &str, host: &str, proxy_ns: &str) -> bool {
        self.hosts
            .iter()
            .any(|(ns, pattern)| namespace_selected(ns, namespace, proxy_ns) && host_matches(pattern, host))
    }

    /// Whether a VirtualService host declared in `namespace` is imported
    /// (SC-01): the VS's own namespace must be selected, and either host
    /// pattern may cover the other, so `*/known.default.svc.cluster.local`
    /// imports a VS for `*.cluster.local`.
    pub fn imports_virtual_service_host(&self, namespace: &str, vs_host: &str, proxy_ns: &str) -> bool {
        self.hosts.iter().any(|(ns, pattern)| {
            namespace_selected(ns, namespace, proxy_ns)
                && (host_matches(pattern, vs_host) || host_matches(vs_host, pattern))
        })
    }
}

/// Whether the namespace part of an egress host (`*`, `.`, `~` or a name)
/// selects `namespace`, for a proxy in `proxy_ns`.
fn namespace_selected(selector: &str, namespace: &str, proxy_ns: &str) -> bool {
    match selector {
        "*" => true,
        "." => namespace == proxy_ns,
        "~" => false,
        other => other == namespace,
    }
}

/// Everything scoping-related about one class of proxy.
#[derive(Clone, Debug)]
pub struct ProxyScope {
    pub namespace: String,
    pub sidecar: Option<Arc<Sidecar>>,
    pub egress: Vec<EgressScope>,
    pub registry_only: bool,
}

impl ProxyScope {
    /// Pick the Sidecar (SC-01): workload-selected in the proxy's namespace,
    /// then the namespace's selector-less one, then the root namespace's; the
    /// oldest wins at each level.
    pub fn new<'a>(snapshot: &'a MeshSnapshot, namespace: &'a str, labels: &BTreeMap<String, String>) -> ProxyScope {
        let in_ns = |ns: &'a str| snapshot.sidecars.iter().filter(move |s| s.metadata.namespace() == ns);
        let sidecar = in_ns(namespace)
            .find(|s| s.spec.workload_selector.as_ref().is_some_and(|sel| labels_match(&sel.labels, labels)))
            .or_else(|| in_ns(namespace).find(|s| s.spec.workload_selector.is_none()))
            .or_else(|| in_ns(ROOT_NAMESPACE).find(|s| s.spec.workload_selector.is_none()))
            .cloned();
        let egress = match &sidecar {
            Some(s) if !s.spec.egress.is_empty() => s.spec.egress.iter().map(EgressScope::from_listener).collect(),
            _ => vec![EgressScope::everything()],
        };
        let registry_only = sidecar
            .as_ref()
            .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
            .is_some_and(|p| p.mode == "REGISTRY_ONLY");
        ProxyScope { namespace: namespace.to_string(), sidecar, egress, registry_only }
    }

    /// Services an egress listener imports (exportTo respected), by hostname.
    pub fn services<'a>(&self, snapshot: &'a MeshSnapshot, egress: &EgressScope) -> Vec<&'a Arc<ServiceModel>> {
        snapshot
            .services
            .iter()
            .filter(|s| s.visible_to(&self.namespace) && egress.imports(&s.namespace, &s.hostname, &self.namespace))
            .collect()
    }

    /// VirtualServices bound to sidecars (`mesh`), exported to this proxy's
    /// namespace, and imported by the listener through their own namespace:
    /// a VS is imported if any of its hosts is (SC-01), and then applies to
    /// all its hosts.
    pub fn virtual_services<'a>(
        &self,
        snapshot: &'a MeshSnapshot,
        egress: &EgressScope,
    ) -> Vec<&'a Arc<VirtualService>> {
        snapshot
            .virtual_services
            .iter()
            .filter(|vs| {
                let ns = vs.metadata.namespace();
                applies_to_mesh(&vs.spec.gateways)
                    && exported_to(&vs.spec.export_to, ns, &self.namespace)
                    && vs
                        .spec
                        .hosts
                        .iter()
                        .any(|h| egress.imports_virtual_service_host(ns, &resolve_host(h, ns), &self.namespace))
            })
            .collect()
    }
}

/// The hosts of these VirtualServices (oldest first) that match none of the
/// imported `services`, each with the first VS naming it: sidecars route
/// them as literal domains (VS-04, VS-06, SC-01).
pub fn hosts_outside_services<'a>(
    vss: &[&'a Arc<VirtualService>],
    services: &[&Arc<ServiceModel>],
) -> Vec<(String, &'a Arc<VirtualService>)> {
    let mut out: Vec<(String, &'a Arc<VirtualService>)> = Vec::new();
    for vs in vss {
        for h in &vs.spec.hosts {
            let host = resolve_host(h, vs.metadata.namespace());
            if !services.iter().any(|s| host_matches(&host, &s.hostname)) && !out.iter().any(|(o, _)| *o == host) {
                out.push((host, vs));
            }
        }
    }
    out
}

/// A VS with no `gateways` applies to sidecars; otherwise only if it lists `mesh`.
pub fn applies_to_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// The VirtualService that routes `hostname` (VS-03, VS-04): an exact host
/// beats any wildcard; among wildcards the most specific wins; ties go to the
/// oldest. VSs are not merged on sidecars.
pub fn virtual_service_for<'a>(
    candidates: &[&'a Arc<VirtualService>],
    hostname: &str,
) -> Option<&'a Arc<VirtualService>> {
    let mut best: Option<((bool, usize), &'a Arc<VirtualService>)> = None;
    for vs in candidates {
        let ns = vs.metadata.namespace();
        for h in &vs.spec.hosts {
            let pattern = resolve_host(h, ns);
            if !host_matches(&pattern, hostname) {
                continue;
            }
            let rank = specificity(&pattern);
            // Candidates are oldest first: only a strictly more specific match replaces.
            if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                best = Some((rank, vs));
            }
        }
    }
    best.map(|(_, vs)| vs)
}

/// The effective DestinationRule for a destination, merged as Istio merges
/// same-host rules of one namespace (DR-03).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EffectiveRule {
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    /// `namespace/name` of the rules merged, for debugging.
    pub sources: Vec<String>,
}

impl EffectiveRule {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// DR lookup (DR-01, DR-02, DR-04): the proxy's namespace first (workload
/// selector rules before namespace-wide ones), then the service's namespace,
/// then the root namespace; the first level with a matching rule wins, and
/// within it the most specific host.
pub fn destination_rule_for(
    snapshot: &MeshSnapshot,
    proxy_ns: &str,
    proxy_labels: &BTreeMap<String, String>,
    hostname: &str,
    service_ns: Option<&str>,
) -> Option<EffectiveRule> {
    let candidates = |ns: &str, local: bool| -> Vec<(&Arc<DestinationRule>, String)> {
        snapshot
            .destination_rules
            .iter()
            .filter(|dr| dr.metadata.namespace() == ns)
            .filter(|dr| {
                if local {
                    dr.spec.workload_selector.as_ref().is_none_or(|s| labels_match(&s.match_labels, proxy_labels))
                } else {
                    // Selector rules are never exported (DR-02).
                    dr.spec.workload_selector.is_none() && exported_to(&dr.spec.export_to, ns, proxy_ns)
                }
            })
            .map(|dr| (dr, resolve_host(&dr.spec.host, ns)))
            .filter(|(_, host)| host_matches(host, hostname))
            .collect()
    };
    let mut levels = vec![(proxy_ns.to_string(), true)];
    if let Some(ns) = service_ns.filter(|ns| *ns != proxy_ns) {
        levels.push((ns.to_string(), false));
    }
    if proxy_ns != ROOT_NAMESPACE && service_ns != Some(ROOT_NAMESPACE) {
        levels.push((ROOT_NAMESPACE.to_string(), false));
    }
    for (ns, local) in levels {
        let found = candidates(&ns, local);
        let Some(best) = found.iter().map(|(_, h)| specificity(h)).max() else {
            continue;
        };
        let mut chosen: Vec<&Arc<DestinationRule>> =
            found.iter().filter(|(_, h)| specificity(h) == best).map(|(dr, _)| *dr).collect();
        // Selector rules first (they win over namespace-wide ones), each group oldest first.
        chosen.sort_by_key(|dr| dr.spec.workload_selector.is_none());
        let mut rule = EffectiveRule::default();
        for dr in chosen {
            rule.sources.push(format!("{}/{}", dr.metadata.namespace(), dr.metadata.name));
            if rule.traffic_policy.is_none() {
                rule.traffic_policy = dr.spec.traffic_policy.clone();
            }
            for subset in &dr.spec.subsets {
                if rule.subset(&subset.name).is_none() {
                    rule.subsets.push(subset.clone());
                }
            }
        }
        return Some(rule);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_declaring_namespace() {
        assert_eq!(resolve_host("reviews", "shop"), "reviews.shop.svc.cluster.local");
        assert_eq!(resolve_host("reviews.other", "shop"), "reviews.other");
        assert_eq!(resolve_host("*", "shop"), "*");
        assert_eq!(resolve_host("*.example.com", "shop"), "*.example.com");
        assert_eq!(resolve_host("10.0.0.1", "shop"), "10.0.0.1");
    }

    #[test]
    fn wildcard_hosts_match_suffixes_only() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.cluster.local", "a.ns.svc.cluster.local"));
        assert!(!host_matches("*.cluster.local", "cluster.local"));
        assert!(!host_matches("a.b", "xa.b"));
    }
}
