//! VirtualService host resolution, visibility and precedence (VS-01..VS-05)
//! and the Host forms that reach a service (VS-08).

use super::*;

const REVIEWS_A: &str = "outbound|80||reviews.ns-a.svc.cluster.local";
const REVIEWS_B: &str = "outbound|80||reviews.ns-b.svc.cluster.local";

fn has_header(route: &Route, name: &str, value: &str) -> bool {
    added_request_headers(route).contains(&(name, value))
}

#[test]
fn vs01_short_host_and_destination_resolve_in_the_vs_namespace() {
    let snapshot = mesh(&[
        &service("ns-a", "reviews", "10.0.0.1", &[("http", 80)]),
        &service("ns-b", "reviews", "10.0.0.2", &[("http", 80)]),
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: ns-b}
spec:
  hosts: [reviews]
  http:
  - headers: {request: {set: {x-vs: b}}}
    route: [{destination: {host: reviews}}]
"#,
    ]);
    let view = config(&snapshot, &sidecar_in("ns-a"));
    let rc = route_config(&view, "80");

    let to_b = &virtual_host_for(&rc, "reviews.ns-b.svc.cluster.local").routes;
    assert_eq!(to_b.len(), 1);
    assert!(has_header(&to_b[0], "x-vs", "b"));
    assert_eq!(cluster_of(&to_b[0]), REVIEWS_B);

    let to_a = &virtual_host_for(&rc, "reviews.ns-a").routes;
    assert!(to_a.iter().all(|r| !has_header(r, "x-vs", "b")));
    assert_eq!(cluster_of(&to_a[0]), REVIEWS_A);
}

#[test]
fn vs01_a_dotted_short_name_is_taken_literally() {
    let rule = |host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: ns-b}}\n\
             spec: {{host: {host}, subsets: [{{name: v1, labels: {{version: v1}}}}]}}"
        )
    };
    let svc = service("ns-b", "reviews", "10.0.0.2", &[("http", 80)]);
    let v1 = "outbound|80|v1|reviews.ns-b.svc.cluster.local";

    let dotted = config(&mesh(&[&svc, &rule("reviews.ns-b")]), &sidecar_in("ns-a"));
    assert!(!has_cluster(&dotted, v1), "`reviews.ns-b` is an FQDN that names no service");

    let bare = config(&mesh(&[&svc, &rule("reviews")]), &sidecar_in("ns-a"));
    assert!(has_cluster(&bare, v1), "`reviews` expands to reviews.ns-b.svc.cluster.local");
}

fn private_vs(export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: b, namespace: ns-b}}\n\
         spec:\n  hosts: [b]\n  exportTo: {export_to}\n  http:\n  - headers: {{request: {{set: {{x-vs: private}}}}}}\n    \
         route: [{{destination: {{host: b}}}}]"
    )
}

fn sees_private_vs(snapshot: &MeshSnapshot, namespace: &str) -> bool {
    let rc = route_config(&config(snapshot, &sidecar_in(namespace)), "80");
    virtual_host_for(&rc, "b.ns-b.svc.cluster.local").routes.iter().any(|r| has_header(r, "x-vs", "private"))
}

#[test]
fn vs02_export_to_limits_which_namespaces_see_the_vs() {
    let svc = service("ns-b", "b", "10.0.0.2", &[("http", 80)]);

    let own = mesh(&[&svc, &private_vs("[\".\"]")]);
    assert!(sees_private_vs(&own, "ns-b"));
    assert!(!sees_private_vs(&own, "ns-a"));

    let listed = mesh(&[&svc, &private_vs("[\".\", ns-a]")]);
    assert!(sees_private_vs(&listed, "ns-b"));
    assert!(sees_private_vs(&listed, "ns-a"));
    assert!(!sees_private_vs(&listed, "ns-c"));

    let everywhere = mesh(&[&svc, &private_vs("[\"*\"]")]);
    assert!(sees_private_vs(&everywhere, "ns-c"));
}

#[test]
fn vs02_root_namespace_vs_is_public_by_default() {
    let snapshot = mesh(&[
        &service("ns-b", "b", "10.0.0.2", &[("http", 80)]),
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: istio-system}
spec:
  hosts: [b.ns-b.svc.cluster.local]
  http:
  - headers: {request: {set: {x-vs: private}}}
    route: [{destination: {host: b.ns-b.svc.cluster.local}}]
"#,
    ]);
    assert!(sees_private_vs(&snapshot, "ns-a"));
}

/// A VS for `known.default` routing to `dest` (a service in `default`).
fn vs_for_known(ns: &str, dest: &str, created: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: known, namespace: {ns}, creationTimestamp: \"{created}\"}}\n\
         spec:\n  hosts: [known.default.svc.cluster.local]\n  http:\n  \
         - route: [{{destination: {{host: {dest}.default.svc.cluster.local}}}}]"
    )
}

#[test]
fn vs03_oldest_vs_wins_whatever_its_namespace_and_is_not_merged() {
    let services = [
        service("default", "known", "10.0.0.1", &[("http", 80)]),
        service("default", "a", "10.0.0.2", &[("http", 80)]),
        service("default", "b", "10.0.0.3", &[("http", 80)]),
        service("default", "c", "10.0.0.4", &[("http", 80)]),
    ];
    // (namespace, destination) per VS, with creation years: the oldest must win
    // whichever namespace holds it.
    for (oldest, years) in [("a", [2020, 2021, 2022]), ("c", [2022, 2021, 2020])] {
        let vss: Vec<String> = [("arbitrary", "a"), ("default", "b"), ("not-default", "c")]
            .iter()
            .zip(years)
            .map(|((ns, dest), year)| vs_for_known(ns, dest, &format!("{year}-01-01T00:00:00Z")))
            .collect();
        let docs: Vec<&str> = services.iter().chain(&vss).map(String::as_str).collect();
        let rc = route_config(&config(&mesh(&docs), &sidecar_in("not-default")), "80");
        let routes = &virtual_host_for(&rc, "known.default").routes;
        assert_eq!(routes.len(), 1, "routes of the other VSs are not appended");
        assert_eq!(cluster_of(&routes[0]), format!("outbound|80||{oldest}.default.svc.cluster.local"));
    }
}

#[test]
fn vs03_same_namespace_conflict_also_goes_to_the_oldest() {
    let vs = |name: &str, dest: &str, created: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\n\
             spec: {{hosts: [known], http: [{{route: [{{destination: {{host: {dest}}}}}]}}]}}"
        )
    };
    let snapshot = mesh(&[
        &service("default", "known", "10.0.0.1", &[("http", 80)]),
        &service("default", "a", "10.0.0.2", &[("http", 80)]),
        &service("default", "b", "10.0.0.3", &[("http", 80)]),
        &vs("aaa", "a", "2024-06-01T00:00:00Z"),
        &vs("zzz", "b", "2024-01-01T00:00:00Z"),
    ]);
    let rc = route_config(&config(&snapshot, &sidecar_in("default")), "80");
    assert_eq!(cluster_of(&virtual_host_for(&rc, "known").routes[0]), "outbound|80||b.default.svc.cluster.local");
}

fn vs_for_host(name: &str, host: &str, dest: &str, created: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\n\
         spec: {{hosts: [\"{host}\"], http: [{{route: [{{destination: {{host: {dest}.default.svc.cluster.local}}}}]}}]}}"
    )
}

#[test]
fn vs04_exact_host_beats_wildcard_in_either_creation_order() {
    let services = [
        service("default", "known", "10.0.0.1", &[("http", 80)]),
        service("default", "alt-known", "10.0.0.2", &[("http", 80)]),
        service("default", "wild", "10.0.0.3", &[("http", 80)]),
        service("default", "explicit", "10.0.0.4", &[("http", 80)]),
    ];
    for (wild_created, explicit_created) in [("2020", "2021"), ("2021", "2020")] {
        let wildcard = vs_for_host("wild", "*.cluster.local", "wild", &format!("{wild_created}-01-01T00:00:00Z"));
        let exact = vs_for_host(
            "explicit",
            "known.default.svc.cluster.local",
            "explicit",
            &format!("{explicit_created}-01-01T00:00:00Z"),
        );
        let docs: Vec<&str> = services.iter().map(String::as_str).chain([wildcard.as_str(), exact.as_str()]).collect();
        let rc = route_config(&config(&mesh(&docs), &sidecar_in("default")), "80");
        let to = |host: &str| cluster_of(&virtual_host_for(&rc, host).routes[0]).to_string();
        assert_eq!(to("known.default"), "outbound|80||explicit.default.svc.cluster.local");
        assert_eq!(to("alt-known.default"), "outbound|80||wild.default.svc.cluster.local");
    }
}

#[test]
fn vs04_most_specific_wildcard_wins_over_an_older_broader_one() {
    let snapshot = mesh(&[
        &service("default", "alt-known", "10.0.0.2", &[("http", 80)]),
        &service("default", "wild", "10.0.0.3", &[("http", 80)]),
        &service("default", "narrow", "10.0.0.4", &[("http", 80)]),
        &vs_for_host("broad", "*.cluster.local", "wild", "2020-01-01T00:00:00Z"),
        &vs_for_host("narrow", "*.default.svc.cluster.local", "narrow", "2021-01-01T00:00:00Z"),
    ]);
    let rc = route_config(&config(&snapshot, &sidecar_in("default")), "80");
    assert_eq!(
        cluster_of(&virtual_host_for(&rc, "alt-known.default").routes[0]),
        "outbound|80||narrow.default.svc.cluster.local"
    );
}

fn vs_with_gateways(gateways: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: b, namespace: ns-b}}\n\
         spec:\n  hosts: [b]\n  gateways: {gateways}\n  http:\n  - headers: {{request: {{set: {{x-r: vs}}}}}}\n    \
         route: [{{destination: {{host: b}}}}]"
    )
}

fn vs_applies_to_sidecars(vs: &str) -> bool {
    let snapshot = mesh(&[&service("ns-b", "b", "10.0.0.2", &[("http", 80)]), vs]);
    let rc = route_config(&config(&snapshot, &sidecar_in("ns-a")), "80");
    virtual_host_for(&rc, "b.ns-b").routes.iter().any(|r| has_header(r, "x-r", "vs"))
}

#[test]
fn vs05_gateways_field_decides_whether_sidecars_use_the_vs() {
    let implicit_mesh = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b, namespace: ns-b}\n\
         spec: {hosts: [b], http: [{headers: {request: {set: {x-r: vs}}}, route: [{destination: {host: b}}]}]}";
    assert!(vs_applies_to_sidecars(implicit_mesh), "no gateways means mesh");
    assert!(!vs_applies_to_sidecars(&vs_with_gateways("[gw]")), "gateway-only VS");
    assert!(vs_applies_to_sidecars(&vs_with_gateways("[mesh, gw]")));
    assert!(!vs_applies_to_sidecars(&vs_with_gateways("[istio-system/gw]")));
}

#[test]
fn vs05_per_match_gateways_override_and_skip_source_labels() {
    let snapshot = mesh(&[
        &service("ns-b", "b", "10.0.0.2", &[("http", 80)]),
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: ns-b}
spec:
  hosts: [b]
  http:
  - match: [{uri: {prefix: /gw}, gateways: [gw]}]
    headers: {request: {set: {x-r: gw}}}
    route: [{destination: {host: b}}]
  - match: [{uri: {prefix: /mesh}, gateways: [mesh], sourceLabels: {app: someone-else}}]
    headers: {request: {set: {x-r: mesh}}}
    route: [{destination: {host: b}}]
  - route: [{destination: {host: b}}]
"#,
    ]);
    let rc = route_config(&config(&snapshot, &sidecar_with("ns-a", &[("app", "client")])), "80");
    let routes = &virtual_host_for(&rc, "b.ns-b").routes;
    assert_eq!(routes.len(), 2, "the gw-only route is dropped: {routes:?}");
    assert!(has_header(&routes[0], "x-r", "mesh"), "sourceLabels are not evaluated when the match names gateways");
}

#[test]
fn vs08_host_forms_by_client_namespace() {
    let snapshot = mesh(&[&service("ns-b", "b", "10.0.0.2", &[("http", 80)])]);
    let vhost = "b.ns-b.svc.cluster.local:80";

    let same_ns = route_config(&config(&snapshot, &sidecar_in("ns-b")), "80");
    let mut domains = virtual_host(&same_ns, vhost).domains.clone();
    domains.sort();
    assert_eq!(domains, ["10.0.0.2", "b", "b.ns-b", "b.ns-b.svc", "b.ns-b.svc.cluster.local"]);
    for host in ["b", "b.ns-b", "b.ns-b.svc", "b.ns-b.svc.cluster.local", "10.0.0.2", "b:80", "b.ns-b:12345"] {
        assert_eq!(virtual_host_for(&same_ns, host).name, vhost, "Host {host} from ns-b");
    }

    let other_ns = route_config(&config(&snapshot, &sidecar_in("ns-a")), "80");
    for host in ["b.ns-b", "b.ns-b.svc", "b.ns-b.svc.cluster.local", "10.0.0.2"] {
        assert_eq!(virtual_host_for(&other_ns, host).name, vhost, "Host {host} from ns-a");
    }
    assert_eq!(virtual_host_for(&other_ns, "b").name, "allow_any", "a bare name does not cross namespaces");
}

#[test]
fn vs08_sidecar_routes_ignore_the_port_in_host_without_rewriting_it() {
    let snapshot = mesh(&[&service("ns-b", "b", "10.0.0.2", &[("http", 80)])]);
    let view = config(&snapshot, &sidecar_in("ns-b"));
    let hcm = http_connection_manager(only_filter(&listener(&view, "0.0.0.0_80")));
    assert_eq!(rds_name(&hcm), "80");
    assert!(route_config(&view, "80").ignore_port_in_host_matching);
    assert_eq!(hcm.strip_port_mode, None, "the upstream sees the Host as the client sent it, port included");
}

#[test]
fn vs04_a_wildcard_matching_no_service_is_a_literal_domain_on_port_80() {
    let snapshot = mesh(&[
        &service("default", "known", "10.0.0.1", &[("http", 80), ("http-alt", 8080)]),
        &service("default", "dest", "10.0.0.2", &[("http", 80)]),
        &vs_for_host("random", "*.unknown.example.com", "dest", "2020-01-01T00:00:00Z"),
    ]);
    let view = config(&snapshot, &sidecar_in("default"));
    let on_80 = route_config(&view, "80");
    let vh = virtual_host_for(&on_80, "a.unknown.example.com");
    assert_eq!(vh.domains, ["*.unknown.example.com"]);
    assert_eq!(cluster_of(&vh.routes[0]), "outbound|80||dest.default.svc.cluster.local");
    assert_eq!(
        cluster_of(&virtual_host_for(&on_80, "known").routes[0]),
        "outbound|80||known.default.svc.cluster.local"
    );

    // VS-06: hosts outside the registry get routes on port 80 only.
    let on_8080 = route_config(&view, "8080");
    assert_eq!(virtual_host_for(&on_8080, "a.unknown.example.com").name, "allow_any");
}

#[test]
fn vs06_an_unregistered_exact_host_is_routed_on_port_80_only() {
    let snapshot = mesh(&[
        &service("default", "b", "10.0.0.1", &[("http", 80), ("http-alt", 8080)]),
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: foo, namespace: default}
spec:
  hosts: [foo.example.com]
  http:
  - route: [{destination: {host: b, port: {number: 8080}}}]
"#,
    ]);
    let view = config(&snapshot, &sidecar_in("default"));
    let on_80 = route_config(&view, "80");
    let vh = virtual_host_for(&on_80, "foo.example.com");
    assert_eq!(vh.name, "foo.example.com:80");
    assert!(vh.include_request_attempt_count);
    assert_eq!(cluster_of(&vh.routes[0]), "outbound|8080||b.default.svc.cluster.local");
    assert_eq!(virtual_host_for(&route_config(&view, "8080"), "foo.example.com").name, "allow_any");
}

#[test]
fn vs06_a_star_host_never_duplicates_the_catch_all_domain() {
    let snapshot = mesh(&[
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - port: {number: 80, protocol: HTTP, name: http}
    hosts: ["./*"]
"#,
        &vs_for_host("everything", "*", "dest", "2020-01-01T00:00:00Z"),
    ]);
    let rc = route_config(&config(&snapshot, &sidecar_in("default")), "80");
    let star: Vec<&str> =
        rc.virtual_hosts.iter().filter(|vh| vh.domains.iter().any(|d| d == "*")).map(|vh| vh.name.as_str()).collect();
    assert_eq!(star, ["allow_any"], "Envoy rejects duplicate domains");
}
