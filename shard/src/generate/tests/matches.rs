//! HTTP match translation (M-01..M-08).

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RouteMatch, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::*;

/// The routes of `b.ns-b` on port 80, for a client in ns-a, under this VS `spec.http`.
fn routes_of(http: &str) -> Vec<Route> {
    routes_for(http, &sidecar_in("ns-a"))
}

fn routes_for(http: &str, client: &ProxyClass) -> Vec<Route> {
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: b, namespace: ns-b}}\n\
         spec:\n  hosts: [b]\n  http:\n{http}"
    );
    let snapshot = mesh(&[&service("ns-b", "b", "10.0.0.2", &[("http", 80)]), &vs]);
    let rc = route_config(&config(&snapshot, client), "80");
    virtual_host_for(&rc, "b.ns-b").routes.clone()
}

fn route_match(route: &Route) -> &RouteMatch {
    route.r#match.as_ref().expect("route has a match")
}

fn header<'a>(route: &'a Route, name: &str) -> &'a HeaderMatcher {
    route_match(route).headers.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no header match {name}"))
}

fn pattern(h: &HeaderMatcher) -> &MatchPattern {
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(sm)) => sm.match_pattern.as_ref().expect("pattern"),
        other => panic!("{} is not a string match: {other:?}", h.name),
    }
}

fn regex_of(p: &MatchPattern) -> &str {
    match p {
        MatchPattern::SafeRegex(r) => &r.regex,
        other => panic!("not a regex: {other:?}"),
    }
}

fn is_presence(h: &HeaderMatcher) -> bool {
    h.header_match_specifier == Some(HeaderMatchSpecifier::PresentMatch(true))
}

/// The subset a route goes to (its cluster's third field).
fn subset_of(route: &Route) -> &str {
    cluster_of(route).split('|').nth(2).expect("outbound cluster name")
}

#[test]
fn m01_a_regex_catch_all_ends_the_list() {
    let routes = routes_of(
        r#"
  - match: [{uri: {regex: ".*"}}]
    headers: {request: {set: {x-first: "1"}}}
    route: [{destination: {host: b}}]
  - route: [{destination: {host: b}}]
"#,
    );
    assert_eq!(routes.len(), 1, "nothing after a catch-all: {routes:?}");
    assert_eq!(added_request_headers(&routes[0]), [("x-first", "1")]);
}

#[test]
fn m01_prefix_slash_and_match_less_routes_end_the_list() {
    let routes = routes_of(
        r#"
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: b, subset: a}}]
  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: b, subset: all}}]
  - route: [{destination: {host: b, subset: never}}]
"#,
    );
    assert_eq!(routes.iter().map(subset_of).collect::<Vec<_>>(), ["a", "all"]);

    let routes = routes_of(
        r#"
  - route: [{destination: {host: b, subset: all}}]
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: b, subset: never}}]
"#,
    );
    assert_eq!(routes.iter().map(subset_of).collect::<Vec<_>>(), ["all"]);
}

#[test]
fn m01_prefix_slash_with_a_header_is_not_a_catch_all() {
    let routes = routes_of(
        r#"
  - match: [{uri: {prefix: /}, headers: {x-v: {exact: "1"}}}]
    route: [{destination: {host: b, subset: v1}}]
  - route: [{destination: {host: b, subset: rest}}]
"#,
    );
    assert_eq!(routes.iter().map(subset_of).collect::<Vec<_>>(), ["v1", "rest"]);
}

#[test]
fn m02_each_match_entry_is_its_own_route_and_fields_are_anded() {
    let routes = routes_of(
        r#"
  - match:
    - {uri: {prefix: /a}, headers: {x-v: {exact: "1"}}}
    - {uri: {exact: /b}}
    route: [{destination: {host: b, subset: v2}}]
  - route: [{destination: {host: b, subset: v1}}]
"#,
    );
    assert_eq!(routes.iter().map(subset_of).collect::<Vec<_>>(), ["v2", "v2", "v1"]);
    let a = route_match(&routes[0]);
    assert_eq!(a.path_specifier, Some(PathSpecifier::Prefix("/a".into())));
    assert_eq!(a.headers.len(), 1);
    assert_eq!(pattern(header(&routes[0], "x-v")), &MatchPattern::Exact("1".into()));
    let b = route_match(&routes[1]);
    assert_eq!(b.path_specifier, Some(PathSpecifier::Path("/b".into())));
    assert!(b.headers.is_empty(), "the header belongs to the first entry only");
}

#[test]
fn m03_without_a_catch_all_there_is_no_default_route() {
    let routes = routes_of(
        r#"
  - match: [{headers: {"a!#$%&'*+-.^_`|~z": {exact: why}}}]
    route: [{destination: {host: b}}]
"#,
    );
    assert_eq!(routes.len(), 1, "no fallback to the default route: {routes:?}");
    assert_eq!(pattern(header(&routes[0], "a!#$%&'*+-.^_`|~z")), &MatchPattern::Exact("why".into()));
}

#[test]
fn m04_uri_exact_prefix_regex_and_ignore_case() {
    let routes = routes_of(
        r#"
  - match: [{uri: {exact: /foo}}]
    route: [{destination: {host: b}}]
  - match: [{uri: {prefix: /pre}}]
    route: [{destination: {host: b}}]
  - match: [{uri: {regex: "/r[0-9]+"}}]
    route: [{destination: {host: b}}]
  - match: [{uri: {exact: /case}, ignoreUriCase: true}]
    route: [{destination: {host: b}}]
"#,
    );
    let paths: Vec<_> = routes.iter().map(|r| route_match(r).path_specifier.clone().expect("path")).collect();
    assert_eq!(paths[0], PathSpecifier::Path("/foo".into()));
    assert_eq!(paths[1], PathSpecifier::Prefix("/pre".into()), "a raw string prefix, not path segments");
    let PathSpecifier::SafeRegex(r) = &paths[2] else { panic!("regex path: {:?}", paths[2]) };
    assert_eq!(r.regex, "/r[0-9]+");
    assert_eq!(paths[3], PathSpecifier::Path("/case".into()));
    assert_eq!(route_match(&routes[0]).case_sensitive, None, "case-sensitive unless asked");
    assert_eq!(route_match(&routes[3]).case_sensitive.as_ref().map(|b| b.value), Some(false));
}

#[test]
fn m05_headers_presence_pseudo_headers_and_query_params() {
    let routes = routes_of(
        r#"
  - match:
    - headers:
        X-Present: {}
        x-star: {regex: "*"}
        x-exact: {exact: a}
        x-prefix: {prefix: b}
        x-regex: {regex: "c.+"}
      method: {exact: GET}
      authority: {prefix: b.}
      scheme: {exact: http}
      queryParams:
        q-exact: {exact: "1"}
        q-regex: {regex: "[0-9]+"}
        q-present: {}
    route: [{destination: {host: b}}]
"#,
    );
    let r = &routes[0];
    assert!(is_presence(header(r, "x-present")), "{{}} is presence, and names are lower-cased");
    assert!(is_presence(header(r, "x-star")), "regex * is presence");
    assert_eq!(pattern(header(r, "x-exact")), &MatchPattern::Exact("a".into()));
    assert_eq!(pattern(header(r, "x-prefix")), &MatchPattern::Prefix("b".into()));
    assert_eq!(regex_of(pattern(header(r, "x-regex"))), "c.+");
    assert_eq!(pattern(header(r, ":method")), &MatchPattern::Exact("GET".into()));
    assert_eq!(pattern(header(r, ":authority")), &MatchPattern::Prefix("b.".into()));
    assert_eq!(pattern(header(r, ":scheme")), &MatchPattern::Exact("http".into()));
    assert!(route_match(r).headers.iter().all(|h| !h.invert_match));

    let query = |name: &str| {
        route_match(r)
            .query_parameters
            .iter()
            .find(|q| q.name == name)
            .and_then(|q| q.query_parameter_match_specifier.clone())
            .unwrap_or_else(|| panic!("no query match {name}"))
    };
    let string = |name: &str| match query(name) {
        QueryParameterMatchSpecifier::StringMatch(sm) => sm.match_pattern.expect("pattern"),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(string("q-exact"), MatchPattern::Exact("1".into()));
    assert_eq!(regex_of(&string("q-regex")), "[0-9]+");
    assert_eq!(query("q-present"), QueryParameterMatchSpecifier::PresentMatch(true));
}

#[test]
fn m06_without_headers_invert_and_treat_missing_as_empty() {
    let routes = routes_of(
        r#"
  - match: [{withoutHeaders: {end-user: {exact: jason}}}]
    route: [{destination: {host: b, subset: exact}}]
  - match: [{withoutHeaders: {end-user: {regex: "*"}}}]
    route: [{destination: {host: b, subset: presence}}]
  - match: [{withoutHeaders: {end-user: {regex: ".*"}}}]
    route: [{destination: {host: b, subset: anything}}]
  - route: [{destination: {host: b}}]
"#,
    );
    let exact = header(&routes[0], "end-user");
    assert!(exact.invert_match);
    assert!(exact.treat_missing_header_as_empty, "a missing header is empty, which is not `jason`");
    assert_eq!(pattern(exact), &MatchPattern::Exact("jason".into()));

    let presence = header(&routes[1], "end-user");
    assert!(presence.invert_match && is_presence(presence));
    assert!(!presence.treat_missing_header_as_empty, "inverted presence must match a missing header");

    let any = header(&routes[2], "end-user");
    assert!(any.invert_match && any.treat_missing_header_as_empty);
    assert_eq!(regex_of(pattern(any)), ".*");
}

#[test]
fn m07_a_vs_with_no_route_on_a_port_leaves_default_routing_there() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: ns-b}
spec:
  hosts: [b]
  http:
  - match: [{port: 8080}]
    headers: {request: {set: {x-p: "8080"}}}
    route: [{destination: {host: b}}]
"#;
    let snapshot = mesh(&[&service("ns-b", "b", "10.0.0.2", &[("http", 80), ("http-alt", 8080)]), vs]);
    let view = config(&snapshot, &sidecar_in("ns-a"));

    let on_8080 = route_config(&view, "8080");
    let routes = &virtual_host_for(&on_8080, "b.ns-b").routes;
    assert_eq!(added_request_headers(&routes[0]), [("x-p", "8080")]);
    assert_eq!(cluster_of(&routes[0]), "outbound|8080||b.ns-b.svc.cluster.local");

    let on_80 = route_config(&view, "80");
    let routes = &virtual_host_for(&on_80, "b.ns-b").routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "default", "default routing, not a 404");
    assert!(added_request_headers(&routes[0]).is_empty());
    assert_eq!(cluster_of(&routes[0]), "outbound|80||b.ns-b.svc.cluster.local");
}

#[test]
fn m08_source_labels_and_namespace_are_resolved_per_client() {
    let http = r#"
  - match: [{sourceLabels: {app: a, version: v2}}]
    route: [{destination: {host: b, subset: v2}}]
  - match: [{sourceNamespace: ns-x}]
    route: [{destination: {host: b, subset: v3}}]
  - route: [{destination: {host: b, subset: v1}}]
"#;
    let subsets = |client: ProxyClass| routes_for(http, &client).iter().map(subset_of).collect::<Vec<_>>().join(",");
    assert_eq!(subsets(sidecar_with("ns-a", &[("app", "a"), ("version", "v2"), ("extra", "x")])), "v2");
    assert_eq!(subsets(sidecar_with("ns-a", &[("app", "a"), ("version", "v1")])), "v1");
    assert_eq!(subsets(sidecar_in("ns-x")), "v3");
    assert_eq!(subsets(sidecar_in("ns-a")), "v1");
}
