//! Endpoint-only rebuilds: a class's view refreshed from the endpoints it
//! uses must equal the view generated from scratch, for every kind of
//! endpoint change; and what is not an endpoint change is not treated as one.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use crate::generate::{Refresh, generate_class, refresh_endpoints};

const REVIEWS: &str = "outbound|9080||reviews.ns-r.svc.cluster.local";
const REVIEWS_V1: &str = "outbound|9080|v1|reviews.ns-r.svc.cluster.local";
const REVIEWS_V2: &str = "outbound|9080|v2|reviews.ns-r.svc.cluster.local";

fn reviews_rule(v1_labels: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: ns-r}}\n\
         spec:\n  host: reviews.ns-r.svc.cluster.local\n  subsets:\n  - {{name: v1, labels: {v1_labels}}}\n  \
         - {{name: v2, labels: {{version: v2}}}}"
    )
}

fn workload_entry(address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: ext-1, namespace: ns-x}}\n\
         spec: {{address: {address}, labels: {{app: ext}}}}"
    )
}

/// Reviews with two subsets, ratings, an isolated namespace that sees only
/// itself, and a DNS ServiceEntry whose endpoints are WorkloadEntries.
fn base() -> Vec<String> {
    vec![
        service("ns-r", "reviews", "10.96.0.10", &[("http", 9080)]),
        service("ns-r", "ratings", "10.96.0.11", &[("http", 9080)]),
        pod("ns-r", "reviews-v1", "10.0.1.1", "{app: reviews, version: v1}"),
        pod("ns-r", "reviews-v2", "10.0.1.2", "{app: reviews, version: v2}"),
        pod("ns-r", "ratings-1", "10.0.2.1", "{app: ratings}"),
        reviews_rule("{version: v1}"),
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns-iso}\n\
         spec: {egress: [{hosts: [\"./*\"]}]}"
            .to_string(),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: ns-x}\n\
         spec: {hosts: [ext.example.com], ports: [{number: 80, name: http}], resolution: DNS, \
         workloadSelector: {labels: {app: ext}}}"
            .to_string(),
        workload_entry("ext-1.example.com"),
    ]
}

fn build(docs: &[String]) -> MeshSnapshot {
    mesh(&docs.iter().map(String::as_str).collect::<Vec<_>>())
}

fn with_replaced(docs: &[String], needle: &str, replacement: Option<String>) -> Vec<String> {
    let i = docs.iter().position(|d| d.contains(needle)).unwrap_or_else(|| panic!("no document with {needle:?}"));
    let mut out = docs.to_vec();
    match replacement {
        Some(r) => out[i] = r,
        None => {
            out.remove(i);
        }
    }
    out
}

fn classes() -> Vec<ProxyClass> {
    vec![
        sidecar_in("ns-r"),
        sidecar_with("ns-r", &[("app", "reviews"), ("version", "v1")]),
        sidecar_in("ns-other"),
        sidecar_in("ns-iso"),
    ]
}

/// Refresh every class from `before` to `after` and check the result equals
/// a fresh generation; returns what each refresh decided.
fn refresh_all(before: &MeshSnapshot, after: &MeshSnapshot) -> Vec<(ProxyClass, &'static str)> {
    assert!(after.same_config_inputs(before), "the change is endpoint-only");
    let changed: HashSet<&str> = after.changed_endpoint_hosts(before);
    let cache = EndpointCache::default();
    classes()
        .into_iter()
        .map(|class| {
            let (view, uses) = generate_class(before, &class, &cache);
            let expected = generate(after, &class, &EndpointCache::default());
            let outcome = match refresh_endpoints(&view, &uses, after, &changed, &cache) {
                Refresh::Unchanged => {
                    assert!(view.same_content(&expected), "{class:?}: kept a view that changed");
                    "unchanged"
                }
                Refresh::Endpoints(refreshed) => {
                    assert!(refreshed.same_content(&expected), "{class:?}: refreshed view differs from a generation");
                    assert!(!refreshed.same_content(&view), "{class:?}: refreshed but nothing changed");
                    assert_eq!(refreshed.revision, after.revision);
                    "endpoints"
                }
                Refresh::Regenerate => "regenerate",
            };
            (class, outcome)
        })
        .collect()
}

/// A class's view generated from `before`, and that view refreshed to `after`
/// (which must change some of its endpoints).
fn refreshed_view(before: &MeshSnapshot, after: &MeshSnapshot, class: &ProxyClass) -> (ProxyView, ProxyView) {
    let cache = EndpointCache::default();
    let (view, uses) = generate_class(before, class, &cache);
    match refresh_endpoints(&view, &uses, after, &after.changed_endpoint_hosts(before), &cache) {
        Refresh::Endpoints(refreshed) => (view, refreshed),
        other => panic!("{class:?}: expected refreshed endpoints, got {other:?}"),
    }
}

fn outcomes(results: &[(ProxyClass, &'static str)]) -> Vec<&'static str> {
    results.iter().map(|(_, o)| *o).collect()
}

fn at_revision(mut snapshot: MeshSnapshot, revision: i64) -> MeshSnapshot {
    snapshot.revision = revision;
    snapshot
}

#[test]
fn a_new_pod_refreshes_the_assignments_that_select_it_in_every_class_that_sees_them() {
    let before = build(&base());
    let mut docs = base();
    docs.push(pod("ns-r", "reviews-v2b", "10.0.1.3", "{app: reviews, version: v2}"));
    let after = at_revision(build(&docs), 2);
    // ns-iso sees only its own namespace: its view is kept.
    assert_eq!(outcomes(&refresh_all(&before, &after)), ["endpoints", "endpoints", "endpoints", "unchanged"]);

    // Only the assignments selecting the pod changed: v1's bytes are the same Arc.
    let (view, refreshed) = refreshed_view(&before, &after, &sidecar_in("ns-r"));
    assert!(Arc::ptr_eq(&view.endpoints[REVIEWS_V1], &refreshed.endpoints[REVIEWS_V1]));
    assert_eq!(endpoint_addresses(&cla(&refreshed, REVIEWS_V2)), ["10.0.1.2:9080", "10.0.1.3:9080"]);
    assert_eq!(endpoint_addresses(&cla(&refreshed, REVIEWS)).len(), 3);
    assert!(Arc::ptr_eq(&view.clusters[REVIEWS_V2], &refreshed.clusters[REVIEWS_V2]), "clusters are not rebuilt");
}

#[test]
fn a_relabelled_pod_moves_between_subsets() {
    let before = build(&base());
    let docs = with_replaced(
        &base(),
        "name: reviews-v1,",
        Some(pod("ns-r", "reviews-v1", "10.0.1.1", "{app: reviews, version: v2}")),
    );
    let after = build(&docs);
    refresh_all(&before, &after);
    let (_, refreshed) = refreshed_view(&before, &after, &sidecar_in("ns-r"));
    assert!(endpoint_addresses(&cla(&refreshed, REVIEWS_V1)).is_empty());
    assert_eq!(endpoint_addresses(&cla(&refreshed, REVIEWS_V2)), ["10.0.1.1:9080", "10.0.1.2:9080"]);
}

#[test]
fn a_service_losing_its_last_endpoint_is_refreshed_to_an_empty_assignment() {
    let before = build(&base());
    let after = build(&with_replaced(&base(), "name: ratings-1,", None));
    assert_eq!(outcomes(&refresh_all(&before, &after)), ["endpoints", "endpoints", "endpoints", "unchanged"]);
}

#[test]
fn endpoints_written_into_a_cluster_regenerate_the_class() {
    // A DNS ServiceEntry's endpoints are in its Cluster, not in an assignment.
    let before = build(&base());
    let after = build(&with_replaced(&base(), "name: ext-1,", Some(workload_entry("ext-2.example.com"))));
    let results = refresh_all(&before, &after);
    // Every class but the isolated one imports ext.example.com.
    assert_eq!(outcomes(&results), ["regenerate", "regenerate", "regenerate", "unchanged"]);
}

#[test]
fn an_unchanged_mesh_changes_no_class() {
    let before = build(&base());
    let after = at_revision(build(&base()), 7);
    assert!(after.changed_endpoint_hosts(&before).is_empty());
    assert_eq!(outcomes(&refresh_all(&before, &after)), ["unchanged"; 4]);
}

#[test]
fn config_changes_are_not_endpoint_only() {
    let before = build(&base());
    let cases = [
        ("a subset's labels", with_replaced(&base(), "kind: DestinationRule", Some(reviews_rule("{version: v3}")))),
        (
            "a service port",
            with_replaced(
                &base(),
                "name: ratings, namespace",
                Some(service("ns-r", "ratings", "10.96.0.11", &[("http", 9080), ("grpc", 9090)])),
            ),
        ),
        ("a Sidecar", with_replaced(&base(), "kind: Sidecar", None)),
        ("a VirtualService", {
            let mut docs = base();
            docs.push(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: ns-r}\n\
                 spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v2}}]}]}"
                    .to_string(),
            );
            docs
        }),
    ];
    for (what, docs) in cases {
        assert!(!build(&docs).same_config_inputs(&before), "{what} changed but the inputs compare equal");
    }
}
