//! Retries, timeouts, header manipulation, rewrites and redirects
//! (R-01..R-03, R-07..R-09).

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::route::v3::{
    RedirectAction, RetryPolicy, redirect_action, route_action::HostRewriteSpecifier, weighted_cluster::cluster_weight,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;

use super::*;
use crate::generate::duration;

const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// The routes of `b.ns-b` on port 80, for a client in ns-a, under this VS `spec.http`.
fn routes_of(http: &str) -> Vec<Route> {
    routes_on(http, 80)
}

fn routes_on(http: &str, port: u16) -> Vec<Route> {
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: b, namespace: ns-b}}\n\
         spec:\n  hosts: [b]\n  http:\n{http}"
    );
    let snapshot = mesh(&[
        &service("ns-b", "b", "10.0.0.2", &[("http", 80), ("http-alt", 85)]),
        &service("ns-b", "c", "10.0.0.3", &[("http", 80)]),
        &vs,
    ]);
    let rc = route_config(&config(&snapshot, &sidecar_in("ns-a")), &port.to_string());
    virtual_host_for(&rc, "b.ns-b").routes.clone()
}

fn retry_policy(route: &Route) -> &RetryPolicy {
    route_action(route).retry_policy.as_ref().expect("route has a retry policy")
}

fn num_retries(p: &RetryPolicy) -> u32 {
    p.num_retries.as_ref().expect("num_retries set").value
}

fn switches_hosts(p: &RetryPolicy) -> bool {
    p.host_selection_retry_max_attempts == 5
        && p.retry_host_predicate.iter().any(|h| {
            h.name == "envoy.retry_host_predicates.previous_hosts"
                && matches!(&h.config_type,
                    Some(envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any))
                        if any.type_url.ends_with("PreviousHostsPredicate")
                            && PreviousHostsPredicate::decode(any.value.as_slice()).is_ok())
        })
}

fn secs(s: u64) -> Option<envoy_types::pb::google::protobuf::Duration> {
    Some(duration(Duration::from_secs(s)))
}

#[test]
fn r01_default_outbound_retry_policy() {
    let snapshot = mesh(&[&service("ns-b", "b", "10.0.0.2", &[("http", 80)])]);
    let rc = route_config(&config(&snapshot, &sidecar_in("ns-a")), "80");
    let vh = virtual_host_for(&rc, "b.ns-b");
    assert!(vh.include_request_attempt_count, "requests carry x-envoy-attempt-count");
    let policy = retry_policy(&vh.routes[0]);
    assert_eq!(policy.retry_on, DEFAULT_RETRY_ON, "503 is not retried by default (1.24+)");
    assert_eq!(num_retries(policy), 2);
    assert!(policy.retriable_status_codes.is_empty());
    assert!(switches_hosts(policy), "retries go to another host: {policy:?}");
    assert_eq!(policy.per_try_timeout, None);
}

#[test]
fn r01_vs_routes_without_retries_get_the_default_policy() {
    let routes = routes_of("  - route: [{destination: {host: b}}]\n");
    let policy = retry_policy(&routes[0]);
    assert_eq!(policy.retry_on, DEFAULT_RETRY_ON);
    assert_eq!(num_retries(policy), 2);
    assert!(switches_hosts(policy));
}

#[test]
fn r01_inbound_retries_reset_before_request_except_on_grpc_ports() {
    let snapshot = mesh(&[&service("ns-b", "b", "10.0.0.2", &[("http", 8080), ("grpc", 9090)])]);
    let view = config(&snapshot, &sidecar_with("ns-b", &[("app", "b")]));

    let http = inbound_route(&view, 8080);
    assert_eq!(cluster_of(&http), "inbound|8080||");
    let policy = retry_policy(&http);
    assert_eq!(policy.retry_on, "reset-before-request");
    assert_eq!(num_retries(policy), 2);

    let grpc = inbound_route(&view, 9090);
    assert_eq!(route_action(&grpc).retry_policy, None);
}

#[test]
fn r02_vs_retries_attempts_retry_on_and_per_try_timeout() {
    let routes = routes_of(
        "  - retries: {attempts: 3, retryOn: 5xx, perTryTimeout: 2s}\n    route: [{destination: {host: b}}]\n",
    );
    let policy = retry_policy(&routes[0]);
    assert_eq!(num_retries(policy), 3, "attempts is the number of retries");
    assert_eq!(policy.retry_on, "5xx");
    assert!(policy.retriable_status_codes.is_empty());
    assert_eq!(policy.per_try_timeout, secs(2));
    assert!(switches_hosts(policy));
}

#[test]
fn r02_numeric_retry_on_becomes_retriable_status_codes() {
    let routes = routes_of(
        "  - match: [{uri: {prefix: /a}}]\n    retries: {attempts: 1, retryOn: \"503\"}\n    route: [{destination: {host: b}}]\n  \
         - match: [{uri: {prefix: /b}}]\n    retries: {attempts: 1, retryOn: \"gateway-error,502, 504\"}\n    route: [{destination: {host: b}}]\n  \
         - retries: {attempts: 1, retryOn: \"retriable-status-codes,503\"}\n    route: [{destination: {host: b}}]\n",
    );
    let a = retry_policy(&routes[0]);
    assert_eq!(a.retry_on, "retriable-status-codes");
    assert_eq!(a.retriable_status_codes, [503]);
    let b = retry_policy(&routes[1]);
    assert_eq!(b.retry_on, "gateway-error,retriable-status-codes");
    assert_eq!(b.retriable_status_codes, [502, 504]);
    let c = retry_policy(&routes[2]);
    assert_eq!(c.retry_on, "retriable-status-codes", "added once");
    assert_eq!(c.retriable_status_codes, [503]);
}

#[test]
fn r02_zero_attempts_disable_retries() {
    let routes = routes_of("  - retries: {attempts: 0}\n    route: [{destination: {host: b}}]\n");
    assert_eq!(route_action(&routes[0]).retry_policy, None);
}

#[test]
fn r02_unset_retry_on_keeps_the_default_conditions() {
    let routes = routes_of("  - retries: {attempts: 4}\n    route: [{destination: {host: b}}]\n");
    let policy = retry_policy(&routes[0]);
    assert_eq!(policy.retry_on, DEFAULT_RETRY_ON);
    assert_eq!(num_retries(policy), 4);
}

#[test]
fn r03_timeouts_are_disabled_by_default() {
    let snapshot = mesh(&[&service("ns-b", "b", "10.0.0.2", &[("http", 80)])]);
    let rc = route_config(&config(&snapshot, &sidecar_in("ns-a")), "80");
    let action = route_action(&virtual_host_for(&rc, "b.ns-b").routes[0]);
    assert_eq!(action.timeout, secs(0), "0 overrides Envoy's 15 s default");
    let max = action.max_stream_duration.as_ref().expect("gRPC timeout header handling");
    assert_eq!(max.grpc_timeout_header_max, secs(0), "gRPC max timeout disabled too");
    assert!(max.max_stream_duration.as_ref().is_none_or(|d| d.seconds == 0 && d.nanos == 0), "no stream cap");
}

#[test]
fn r03_vs_timeout_is_the_route_timeout() {
    let routes = routes_of("  - timeout: 1s\n    route: [{destination: {host: b}}]\n");
    let action = route_action(&routes[0]);
    assert_eq!(action.timeout, secs(1));
    // Envoy ignores a route's `timeout` once `max_stream_duration` is set, so
    // a VS timeout must come without it.
    assert_eq!(action.max_stream_duration, None, "the 1 s timeout would not be honoured");
}

#[test]
fn r07_route_level_header_operations() {
    let routes = routes_of(
        r#"
  - headers:
      request:
        set: {x-custom: some-value}
        add: {istio-custom-header: user-defined-value}
        remove: [x-drop]
      response:
        set: {x-resp: r}
        add: {x-resp-add: ra}
        remove: [x-resp-drop]
    route: [{destination: {host: b}}]
"#,
    );
    let r = &routes[0];
    let action_of = |key: &str| {
        r.request_headers_to_add
            .iter()
            .find(|o| o.header.as_ref().is_some_and(|h| h.key == key))
            .map(|o| o.append_action)
            .unwrap_or_else(|| panic!("{key} not added"))
    };
    assert_eq!(action_of("x-custom"), HeaderAppendAction::OverwriteIfExistsOrAdd as i32, "set overwrites");
    assert_eq!(action_of("istio-custom-header"), HeaderAppendAction::AppendIfExistsOrAdd as i32, "add appends");
    assert_eq!(r.request_headers_to_remove, ["x-drop"]);
    let response: Vec<(&str, &str)> =
        r.response_headers_to_add.iter().filter_map(|o| o.header.as_ref()).map(|h| (&*h.key, &*h.value)).collect();
    assert_eq!(response, [("x-resp", "r"), ("x-resp-add", "ra")]);
    assert_eq!(r.response_headers_to_remove, ["x-resp-drop"]);
}

#[test]
fn r07_destination_operations_run_after_route_operations() {
    let routes = routes_of(
        r#"
  - headers: {request: {set: {x-order: route}}}
    route:
    - destination: {host: b}
      headers: {request: {set: {x-order: destination}}}
"#,
    );
    assert_eq!(added_request_headers(&routes[0]), [("x-order", "route"), ("x-order", "destination")]);
}

fn host_rewrite(route: &Route) -> Option<&str> {
    match &route_action(route).host_rewrite_specifier {
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h),
        None => None,
        other => panic!("unexpected host rewrite {other:?}"),
    }
}

#[test]
fn r07_setting_authority_or_host_rewrites_the_authority() {
    for key in [":authority", "Host", "host"] {
        let routes = routes_of(&format!(
            "  - headers: {{request: {{set: {{\"{key}\": new-host}}}}}}\n    route: [{{destination: {{host: b}}}}]\n"
        ));
        assert_eq!(host_rewrite(&routes[0]), Some("new-host"), "set {key}");
        assert!(added_request_headers(&routes[0]).is_empty(), "{key} is not added as a header");
    }
}

#[test]
fn r07_route_authority_wins_over_destination_authority() {
    let single = routes_of(
        r#"
  - headers: {request: {set: {host: route-host}}}
    route:
    - destination: {host: b}
      headers: {request: {set: {host: dest-host}}}
"#,
    );
    assert_eq!(host_rewrite(&single[0]), Some("route-host"));

    let weighted = routes_of(
        r#"
  - headers: {request: {set: {host: route-host}}}
    route:
    - {destination: {host: b}, weight: 50, headers: {request: {set: {host: b-host}}}}
    - {destination: {host: c}, weight: 50, headers: {request: {set: {host: c-host}}}}
"#,
    );
    assert_eq!(host_rewrite(&weighted[0]), Some("route-host"));
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &route_action(&weighted[0]).cluster_specifier
    else {
        panic!("weighted")
    };
    assert!(w.clusters.iter().all(|c| c.host_rewrite_specifier.is_none()));
}

#[test]
fn r07_each_weighted_destination_gets_its_own_authority() {
    let routes = routes_of(
        r#"
  - route:
    - {destination: {host: b}, weight: 50, headers: {request: {set: {host: b-host}}}}
    - {destination: {host: c}, weight: 50, headers: {request: {set: {host: c-host}}}}
"#,
    );
    assert_eq!(host_rewrite(&routes[0]), None);
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &route_action(&routes[0]).cluster_specifier else {
        panic!("weighted")
    };
    let rewrites: Vec<_> = w.clusters.iter().map(|c| c.host_rewrite_specifier.clone()).collect();
    assert_eq!(
        rewrites,
        [
            Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral("b-host".into())),
            Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral("c-host".into())),
        ]
    );
}

#[test]
fn r07_host_and_pseudo_headers_are_never_removed_or_set() {
    let routes = routes_of(
        r#"
  - headers:
      request:
        set: {":path": /evil, x-ok: "1"}
        add: {":method": POST}
        remove: [host, ":path", x-drop]
      response:
        set: {":status": "500"}
        remove: [":status"]
    route: [{destination: {host: b}}]
"#,
    );
    let r = &routes[0];
    assert_eq!(r.request_headers_to_remove, ["x-drop"]);
    assert_eq!(added_request_headers(r), [("x-ok", "1")], "Envoy rejects pseudo-headers in headers_to_add");
    assert!(r.response_headers_to_add.is_empty());
    assert!(r.response_headers_to_remove.is_empty());
}

#[test]
fn r08_rewrites() {
    let routes = routes_of(
        r#"
  - match: [{uri: {exact: /foo}}]
    rewrite: {uri: /new/path}
    route: [{destination: {host: b}}]
  - match: [{uri: {exact: /auth}}]
    rewrite: {authority: new-authority}
    route: [{destination: {host: b}}]
  - match: [{uri: {prefix: /v1/}}]
    rewrite: {uri: /}
    route: [{destination: {host: b}}]
  - match: [{uri: {prefix: /re/}}]
    rewrite: {uriRegexRewrite: {match: "^/re/(.*)$", rewrite: "/\\1"}}
    route: [{destination: {host: b}}]
"#,
    );
    assert_eq!(route_action(&routes[0]).prefix_rewrite, "/new/path");
    assert_eq!(host_rewrite(&routes[1]), Some("new-authority"));
    assert_eq!(route_action(&routes[2]).prefix_rewrite, "/", "only the matched prefix is replaced");
    let rr = route_action(&routes[3]).regex_rewrite.as_ref().expect("regex rewrite");
    assert_eq!(rr.pattern.as_ref().map(|p| p.regex.as_str()), Some("^/re/(.*)$"));
    assert_eq!(rr.substitution, "/\\1");
}

fn redirect(route: &Route) -> &RedirectAction {
    match &route.action {
        Some(route::Action::Redirect(r)) => r,
        other => panic!("not a redirect: {other:?}"),
    }
}

#[test]
fn r09_redirect_codes() {
    use redirect_action::RedirectResponseCode as Code;
    let mut http = String::new();
    for code in ["", "302", "303", "307", "308"] {
        let code_field = if code.is_empty() { String::new() } else { format!(", redirectCode: {code}") };
        http.push_str(&format!("  - match: [{{uri: {{exact: /c{code}}}}}]\n    redirect: {{uri: /new{code_field}}}\n"));
    }
    let codes: Vec<i32> = routes_of(&http).iter().map(|r| redirect(r).response_code).collect();
    let expected =
        [Code::MovedPermanently, Code::Found, Code::SeeOther, Code::TemporaryRedirect, Code::PermanentRedirect];
    assert_eq!(codes, expected.map(|c| c as i32));
}

#[test]
fn r09_redirect_uri_authority_scheme_and_port() {
    let routes = routes_of(
        r#"
  - match: [{uri: {exact: /foo}}]
    redirect: {uri: /new/path}
  - match: [{uri: {exact: /auth}}]
    redirect: {authority: elsewhere.example.com, scheme: https, port: 8443}
"#,
    );
    let uri = redirect(&routes[0]);
    assert_eq!(
        uri.path_rewrite_specifier,
        Some(redirect_action::PathRewriteSpecifier::PathRedirect("/new/path".into()))
    );
    assert_eq!(uri.host_redirect, "");
    assert_eq!(uri.port_redirect, 0);
    let auth = redirect(&routes[1]);
    assert_eq!(auth.host_redirect, "elsewhere.example.com");
    assert_eq!(
        auth.scheme_rewrite_specifier,
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect("https".into()))
    );
    assert_eq!(auth.port_redirect, 8443);
}

#[test]
fn r09_derive_port_from_request_port_keeps_the_listener_port() {
    let http = "  - redirect: {scheme: https, derivePort: FROM_REQUEST_PORT}\n";
    assert_eq!(redirect(&routes_on(http, 80)[0]).port_redirect, 80, "https://host:80/..., not the https default");
    assert_eq!(redirect(&routes_on(http, 85)[0]).port_redirect, 85);
    let default = "  - redirect: {scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}\n";
    assert_eq!(redirect(&routes_on(default, 85)[0]).port_redirect, 0);
}
