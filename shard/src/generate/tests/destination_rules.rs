//! Which DestinationRule applies and how rules merge (DR-01..DR-05), seen
//! through the subset clusters generated and the clusters' `lb_policy`.

use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;

use super::*;

/// A DestinationRule; `extra` is more of its spec (YAML flow entries).
fn rule(ns: &str, name: &str, host: &str, subsets: &[&str], extra: &str) -> String {
    let subsets: Vec<String> = subsets.iter().map(|s| format!("{{name: {s}, labels: {{version: {s}}}}}")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{host: \"{host}\", subsets: [{}]{extra}}}",
        subsets.join(", ")
    )
}

fn b_service() -> String {
    service("ns-b", "b", "10.0.0.2", &[("http", 80)])
}

/// The subsets of `b.ns-b` port 80 that have a cluster, for this client.
fn subsets_seen(docs: &[&str], client: &ProxyClass) -> Vec<String> {
    let view = config(&mesh(docs), client);
    let prefix = "outbound|80|";
    let suffix = "|b.ns-b.svc.cluster.local";
    let mut subsets: Vec<String> = view
        .clusters
        .keys()
        .filter_map(|n| n.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    subsets.sort();
    subsets
}

fn lb_policy(view: &ProxyView, name: &str) -> LbPolicy {
    let c = cluster(view, name).unwrap_or_else(|| panic!("no cluster {name}"));
    LbPolicy::try_from(c.lb_policy).expect("known lb policy")
}

#[test]
fn dr01_client_namespace_then_service_namespace_then_root() {
    let svc = b_service();
    let client_ns = rule("ns-a", "in-client", "b.ns-b.svc.cluster.local", &["a1"], "");
    let service_ns = rule("ns-b", "in-service", "b", &["b1"], "");
    let root = rule("istio-system", "in-root", "b.ns-b.svc.cluster.local", &["r1"], "");

    let all = [svc.as_str(), &client_ns, &service_ns, &root];
    assert_eq!(subsets_seen(&all, &sidecar_in("ns-a")), ["a1"], "no merging across levels");
    assert_eq!(subsets_seen(&all, &sidecar_in("ns-c")), ["b1"]);
    assert_eq!(subsets_seen(&[&svc, &root], &sidecar_in("ns-c")), ["r1"]);
}

#[test]
fn dr01_in_the_client_namespace_exact_host_beats_wildcard() {
    let docs = [
        b_service(),
        rule("ns-a", "exact", "b.ns-b.svc.cluster.local", &["exact"], ""),
        rule("ns-a", "wild", "*.ns-b.svc.cluster.local", &["wild"], ""),
    ];
    let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
    assert_eq!(subsets_seen(&docs, &sidecar_in("ns-a")), ["exact"]);
}

#[test]
fn dr01_a_root_namespace_proxy_uses_root_rules_then_the_service_namespace() {
    let svc = b_service();
    let root = rule("istio-system", "in-root", "b.ns-b.svc.cluster.local", &["r1"], "");
    let service_ns = rule("ns-b", "in-service", "b", &["b1"], "");
    assert_eq!(subsets_seen(&[&svc, &root, &service_ns], &sidecar_in("istio-system")), ["r1"]);
    assert_eq!(subsets_seen(&[&svc, &service_ns], &sidecar_in("istio-system")), ["b1"]);
}

#[test]
fn dr02_export_to_limits_who_uses_a_rule() {
    let svc = b_service();
    let private = rule("ns-b", "private", "b", &["p1"], ", exportTo: [\".\"]");
    assert_eq!(subsets_seen(&[&svc, &private], &sidecar_in("ns-b")), ["p1"]);
    assert!(subsets_seen(&[&svc, &private], &sidecar_in("ns-a")).is_empty());

    let listed = rule("ns-b", "listed", "b", &["p1"], ", exportTo: [ns-a]");
    assert_eq!(subsets_seen(&[&svc, &listed], &sidecar_in("ns-a")), ["p1"]);
    assert!(subsets_seen(&[&svc, &listed], &sidecar_in("ns-c")).is_empty());
}

#[test]
fn dr02_a_rule_with_a_workload_selector_is_never_exported() {
    let svc = b_service();
    let selecting = rule("ns-b", "sel", "b", &["s1"], ", workloadSelector: {matchLabels: {app: a1}}");
    assert!(subsets_seen(&[&svc, &selecting], &sidecar_with("ns-a", &[("app", "a1")])).is_empty());
    assert_eq!(subsets_seen(&[&svc, &selecting], &sidecar_with("ns-b", &[("app", "a1")])), ["s1"]);
}

fn dated(dr: String, created: &str) -> String {
    dr.replacen("namespace: ns-b}", &format!("namespace: ns-b, creationTimestamp: \"{created}\"}}"), 1)
}

#[test]
fn dr03_same_host_rules_of_one_namespace_merge() {
    let svc = b_service();
    let older = dated(
        rule("ns-b", "zz-older", "b", &["v1", "v2"], ", trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}"),
        "2020-01-01T00:00:00Z",
    );
    let newer = dated(
        rule("ns-b", "aa-newer", "b", &["v3", "v4"], ", trafficPolicy: {loadBalancer: {simple: RANDOM}}"),
        "2021-01-01T00:00:00Z",
    );
    let docs = [svc.as_str(), &older, &newer];
    assert_eq!(subsets_seen(&docs, &sidecar_in("ns-a")), ["v1", "v2", "v3", "v4"]);
    let view = config(&mesh(&docs), &sidecar_in("ns-a"));
    assert_eq!(
        lb_policy(&view, "outbound|80||b.ns-b.svc.cluster.local"),
        LbPolicy::RoundRobin,
        "the oldest rule's policy"
    );
}

#[test]
fn dr03_policy_comes_from_the_first_rule_that_has_one_and_the_oldest_subset_wins() {
    let older = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {name: older, namespace: ns-b, creationTimestamp: \"2020-01-01T00:00:00Z\"}\n\
         spec: {host: b, subsets: [{name: v1, labels: {version: v1}}]}";
    let newer = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {name: newer, namespace: ns-b, creationTimestamp: \"2021-01-01T00:00:00Z\"}\n\
         spec: {host: b, trafficPolicy: {loadBalancer: {simple: RANDOM}}, subsets: [{name: v1, labels: {version: other}}]}";
    let snapshot = mesh(&[
        &b_service(),
        older,
        newer,
        &pod("ns-b", "b-v1", "10.1.0.1", "{app: b, version: v1}"),
        &pod("ns-b", "b-other", "10.1.0.2", "{app: b, version: other}"),
    ]);
    let view = config(&snapshot, &sidecar_in("ns-a"));
    assert_eq!(lb_policy(&view, "outbound|80||b.ns-b.svc.cluster.local"), LbPolicy::Random);
    let v1 = cla(&view, "outbound|80|v1|b.ns-b.svc.cluster.local");
    assert_eq!(endpoint_addresses(&v1), ["10.1.0.1:80"], "v1 as the older rule defines it");
}

#[test]
fn dr03_rules_with_different_export_to_stay_separate() {
    let svc = b_service();
    let private = rule("ns-b", "private", "b", &["v1"], ", exportTo: [\".\"]");
    let public = rule("ns-b", "public", "b", &["v3"], ", exportTo: [\"*\"]");
    assert_eq!(subsets_seen(&[&svc, &private, &public], &sidecar_in("ns-a")), ["v3"]);
}

#[test]
fn dr04_a_selector_rule_applies_to_selected_clients_of_its_namespace() {
    let svc = b_service();
    let selecting = rule(
        "ns-a",
        "sel",
        "b.ns-b.svc.cluster.local",
        &["s1"],
        ", workloadSelector: {matchLabels: {app: a1}}, trafficPolicy: {loadBalancer: {simple: RANDOM}}",
    );
    let namespace_wide = rule(
        "ns-a",
        "ns",
        "b.ns-b.svc.cluster.local",
        &["n1"],
        ", trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}",
    );
    let docs = [svc.as_str(), &selecting, &namespace_wide];
    let default = "outbound|80||b.ns-b.svc.cluster.local";

    let a1 = sidecar_with("ns-a", &[("app", "a1")]);
    assert_eq!(subsets_seen(&docs, &a1), ["n1", "s1"], "selector rules take the namespace rule's subsets");
    assert_eq!(lb_policy(&config(&mesh(&docs), &a1), default), LbPolicy::Random);

    let other = sidecar_with("ns-a", &[("app", "other")]);
    assert_eq!(subsets_seen(&docs, &other), ["n1"]);
    assert_eq!(lb_policy(&config(&mesh(&docs), &other), default), LbPolicy::RoundRobin);

    let elsewhere = sidecar_with("ns-c", &[("app", "a1")]);
    assert!(subsets_seen(&docs, &elsewhere).is_empty());
    assert_eq!(lb_policy(&config(&mesh(&docs), &elsewhere), default), LbPolicy::LeastRequest, "Istio's default");
}

/// Service b with ports 80 and 81 under a rule with this spec tail.
fn two_port_view(spec: &str) -> ProxyView {
    let dr = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: b, namespace: ns-b}}\n\
         spec: {{host: b{spec}}}"
    );
    config(&mesh(&[&service("ns-b", "b", "10.0.0.2", &[("http", 80), ("http-81", 81)]), &dr]), &sidecar_in("ns-a"))
}

fn outbound_b(port: u16, subset: &str) -> String {
    format!("outbound|{port}|{subset}|b.ns-b.svc.cluster.local")
}

#[test]
fn dr05_port_level_settings_replace_the_top_level_policy() {
    let view = two_port_view(
        ", trafficPolicy: {loadBalancer: {simple: RANDOM}, portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: ROUND_ROBIN}}]}",
    );
    assert_eq!(lb_policy(&view, &outbound_b(80, "")), LbPolicy::RoundRobin);
    assert_eq!(lb_policy(&view, &outbound_b(81, "")), LbPolicy::Random);

    let no_lb =
        two_port_view(", trafficPolicy: {loadBalancer: {simple: RANDOM}, portLevelSettings: [{port: {number: 80}}]}");
    assert_eq!(lb_policy(&no_lb, &outbound_b(80, "")), LbPolicy::LeastRequest, "defaults, not the top-level policy");
    assert_eq!(lb_policy(&no_lb, &outbound_b(81, "")), LbPolicy::Random);
}

#[test]
fn dr05_subset_policy_overrides_the_rule_policy_for_its_port() {
    let view = two_port_view(
        ", trafficPolicy: {loadBalancer: {simple: RANDOM}, portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: ROUND_ROBIN}}]}, \
         subsets: [\
           {name: lb, labels: {version: lb}, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}, \
           {name: port-only, labels: {version: p}, trafficPolicy: {portLevelSettings: [{port: {number: 81}, loadBalancer: {simple: ROUND_ROBIN}}]}}, \
           {name: plain, labels: {version: plain}}]",
    );
    // A subset that sets a load balancer uses it on every port.
    assert_eq!(lb_policy(&view, &outbound_b(80, "lb")), LbPolicy::LeastRequest);
    assert_eq!(lb_policy(&view, &outbound_b(81, "lb")), LbPolicy::LeastRequest);
    // A subset port-level setting replaces the policy on its port; fields the
    // subset leaves unset come from the rule's policy for the port.
    assert_eq!(lb_policy(&view, &outbound_b(81, "port-only")), LbPolicy::RoundRobin);
    assert_eq!(lb_policy(&view, &outbound_b(80, "port-only")), LbPolicy::RoundRobin, "the rule's port-80 policy");
    // No subset policy: the rule's policy for the port.
    assert_eq!(lb_policy(&view, &outbound_b(80, "plain")), LbPolicy::RoundRobin);
    assert_eq!(lb_policy(&view, &outbound_b(81, "plain")), LbPolicy::Random);
}

#[test]
fn dr05_subset_inherits_the_top_level_load_balancer_it_does_not_set() {
    let view = two_port_view(
        ", trafficPolicy: {loadBalancer: {simple: RANDOM}}, \
         subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {portLevelSettings: [{port: {number: 81}, loadBalancer: {simple: ROUND_ROBIN}}]}}]",
    );
    assert_eq!(lb_policy(&view, &outbound_b(80, "v1")), LbPolicy::Random);
    assert_eq!(lb_policy(&view, &outbound_b(81, "v1")), LbPolicy::RoundRobin);
}
