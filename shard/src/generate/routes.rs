//! VirtualService HTTP routes and default routes, as Envoy route
//! configuration. Istio's behaviour is the specification (M-01..M-06,
//! D-01..D-03, R-01..R-03, R-07..R-09 in `shared/istio-semantics.md`).

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    self as route, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteAction, RouteMatch,
    WeightedCluster, header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, retry_policy::RetryHostPredicate, route_action, route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use meshplane_model::duration::parse_duration;
use meshplane_model::meta::labels_match;
use meshplane_model::networking::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRoute, HttpRouteDestination, StringMatch,
    StringMatchKind, VirtualService,
};

use super::{any, duration, outbound_cluster_name};
use crate::generate::scope::resolve_host;
use crate::snapshot::MeshSnapshot;

/// Istio's default retry conditions (R-01, 1.24+: 503 not retried by default).
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// Who is asking: routes with source conditions are kept or dropped per proxy (M-08).
pub struct RouteContext<'a> {
    pub snapshot: &'a MeshSnapshot,
    pub proxy_namespace: &'a str,
    pub proxy_labels: &'a BTreeMap<String, String>,
    /// The listener (service) port the routes are for.
    pub port: u16,
    /// The caller is a proxyless gRPC client.
    pub proxyless_grpc: bool,
}

/// Istio's default outbound route for a service port: everything to the
/// un-subsetted cluster, no timeout, default retries.
pub fn default_route(cluster: String, proxyless_grpc: bool) -> Route {
    Route {
        name: "default".into(),
        r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() }),
        action: Some(route::route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            ..route_action_defaults(proxyless_grpc)
        })),
        ..Default::default()
    }
}

/// Route action fields every outbound route carries: timeout disabled,
/// default retries unless told.
fn route_action_defaults(grpc: bool) -> RouteAction {
    let mut action = RouteAction { retry_policy: Some(default_retry_policy()), ..Default::default() };
    set_timeout(&mut action, Duration::ZERO, grpc);
    action
}

/// A route timeout (zero disables it), as Istio sets it: Envoy ignores
/// `timeout` once `max_stream_duration` is present, so the stream duration is
/// set only to disable timeouts (also lifting the cap on gRPC's
/// `grpc-timeout` header). Proxyless gRPC reads only `max_stream_duration`.
fn set_timeout(action: &mut RouteAction, timeout: Duration, grpc: bool) {
    action.timeout = Some(duration(timeout));
    action.max_stream_duration = if grpc {
        Some(route_action::MaxStreamDuration { max_stream_duration: Some(duration(timeout)), ..Default::default() })
    } else if timeout.is_zero() {
        Some(route_action::MaxStreamDuration {
            max_stream_duration: Some(duration(Duration::ZERO)),
            grpc_timeout_header_max: Some(duration(Duration::ZERO)),
            ..Default::default()
        })
    } else {
        None
    };
}

pub fn default_retry_policy() -> RetryPolicy {
    retry_policy(DEFAULT_RETRY_ON.to_string(), 2, None, Vec::new())
}

/// `attempts` is the number of retries; numeric `retryOn` entries become
/// retriable status codes (adding `retriable-status-codes`); an unset `retryOn`
/// keeps the default conditions.
fn translate_retries(r: &meshplane_model::networking::HttpRetry) -> RetryPolicy {
    let mut conditions: Vec<String> = Vec::new();
    let mut codes = Vec::new();
    match &r.retry_on {
        Some(on) => {
            for cond in on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                match cond.parse::<u32>() {
                    Ok(code) => codes.push(code),
                    Err(_) => conditions.push(cond.to_string()),
                }
            }
            if !codes.is_empty() && !conditions.iter().any(|c| c == "retriable-status-codes") {
                conditions.push("retriable-status-codes".into());
            }
        }
        None => conditions.push(DEFAULT_RETRY_ON.into()),
    }
    let per_try = r.per_try_timeout.as_deref().and_then(|t| parse_duration(t).ok());
    retry_policy(conditions.join(","), u32::try_from(r.attempts).unwrap_or(0), per_try, codes)
}

fn retry_policy(retry_on: String, retries: u32, per_try_timeout: Option<Duration>, codes: Vec<u32>) -> RetryPolicy {
    RetryPolicy {
        retry_on,
        num_retries: Some(UInt32Value { value: retries }),
        per_try_timeout: per_try_timeout.map(duration),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
                &PreviousHostsPredicate {},
            ))),
        }],
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: codes,
        ..Default::default()
    }
}

/// Translate a VS's HTTP routes for one listener port and one caller. Returns
/// `None` when no route applies on this port (M-07: the VS is then skipped and
/// default routing applies).
pub fn virtual_service_routes(vs: &VirtualService, ctx: &RouteContext<'_>) -> Option<Vec<Route>> {
    let ns = vs.metadata.namespace();
    let mut out = Vec::new();
    for (i, http) in vs.spec.http.iter().enumerate() {
        let applicable: Vec<&HttpMatchRequest> = http.matches.iter().filter(|m| match_applies(m, ctx)).collect();
        if !http.matches.is_empty() && applicable.is_empty() {
            continue; // every match is for another port or another caller
        }
        let name = http.name.clone().unwrap_or_else(|| format!("{}.{}.{i}", ns, vs.metadata.name));
        let mut routes: Vec<Route> = if applicable.is_empty() {
            vec![build_route(http, None, ns, ctx, &name)]
        } else {
            applicable.iter().map(|m| build_route(http, Some(m), ns, ctx, &name)).collect()
        };
        let catch_all = routes.iter().any(is_catch_all);
        out.append(&mut routes);
        if catch_all {
            break; // M-01: nothing after a catch-all is reachable
        }
    }
    (!out.is_empty()).then_some(out)
}

fn match_applies(m: &HttpMatchRequest, ctx: &RouteContext<'_>) -> bool {
    if m.port.is_some_and(|p| p != u32::from(ctx.port)) {
        return false;
    }
    if !m.gateways.is_empty() {
        // A per-match gateways list overrides the VS's; sourceLabels are then not evaluated (VS-05).
        return m.gateways.iter().any(|g| g == "mesh");
    }
    if !m.source_labels.is_empty() && !labels_match(&m.source_labels, ctx.proxy_labels) {
        return false;
    }
    m.source_namespace.as_deref().is_none_or(|ns| ns == ctx.proxy_namespace)
}

fn is_catch_all(route: &Route) -> bool {
    let Some(m) = &route.r#match else { return true };
    let path_all = match &m.path_specifier {
        None => true,
        Some(PathSpecifier::Prefix(p)) => p == "/",
        Some(PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    path_all && m.headers.is_empty() && m.query_parameters.is_empty()
}

fn build_route(http: &HttpRoute, m: Option<&HttpMatchRequest>, ns: &str, ctx: &RouteContext<'_>, name: &str) -> Route {
    let route_match = m.map_or_else(
        || RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() },
        translate_match,
    );
    let mut envoy_route = Route { name: name.to_string(), r#match: Some(route_match), ..Default::default() };
    let mut authority: Option<String> = None;
    if let Some(headers) = &http.headers {
        apply_header_operations(&mut envoy_route, headers, &mut authority);
    }
    if let Some(redirect) = &http.redirect {
        envoy_route.action = Some(route::route::Action::Redirect(translate_redirect(redirect, ctx.port)));
        return envoy_route;
    }

    let mut action = RouteAction {
        retry_policy: match &http.retries {
            None => Some(default_retry_policy()),
            Some(r) if r.attempts == 0 => None,
            Some(r) => Some(translate_retries(r)),
        },
        ..route_action_defaults(ctx.proxyless_grpc)
    };
    if let Some(t) = http.timeout.as_deref().and_then(|t| parse_duration(t).ok()) {
        set_timeout(&mut action, t, ctx.proxyless_grpc);
    }
    if let Some(rw) = &http.rewrite {
        if let Some(uri) = &rw.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite =
                Some(RegexMatchAndSubstitute { pattern: Some(regex(&rr.pattern)), substitution: rr.rewrite.clone() });
        }
        if let Some(a) = &rw.authority {
            authority = Some(a.clone());
        }
    }

    let destinations: Vec<&HttpRouteDestination> = if http.route.len() > 1 {
        http.route.iter().filter(|d| d.weight.unwrap_or(0) > 0).collect()
    } else {
        http.route.iter().collect()
    };
    if let [only] = destinations.as_slice() {
        action.cluster_specifier =
            Some(route_action::ClusterSpecifier::Cluster(destination_cluster(&only.destination, ns, ctx)));
        if let Some(headers) = &only.headers {
            let mut dest_authority = None;
            apply_header_operations(&mut envoy_route, headers, &mut dest_authority);
            authority = authority.or(dest_authority);
        }
    } else {
        let clusters = destinations
            .iter()
            .map(|d| {
                let mut cw = ClusterWeight {
                    name: destination_cluster(&d.destination, ns, ctx),
                    weight: Some(UInt32Value { value: u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0) }),
                    ..Default::default()
                };
                if let Some(headers) = &d.headers {
                    let mut dest_authority = None;
                    if let Some(req) = &headers.request {
                        cw.request_headers_to_add = header_options(req, &mut dest_authority);
                        cw.request_headers_to_remove = removable(&req.remove);
                    }
                    if let Some(resp) = &headers.response {
                        cw.response_headers_to_add = header_options(resp, &mut None);
                        cw.response_headers_to_remove = removable(&resp.remove);
                    }
                    // the route-level authority wins over a destination's.
                    if authority.is_none()
                        && let Some(a) = dest_authority
                    {
                        cw.host_rewrite_specifier =
                            Some(route::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(a));
                    }
                }
                cw
            })
            .collect();
        action.cluster_specifier =
            Some(route_action::ClusterSpecifier::WeightedClusters(WeightedCluster { clusters, ..Default::default() }));
    }
    if let Some(a) = authority {
        action.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(a));
    }
    envoy_route.action = Some(route::route::Action::Route(action));
    envoy_route
}

/// The cluster a destination names (D-02): an explicit port wins; a
/// destination service with a single port uses it; otherwise the listener's
/// port. An unknown host or subset still names a cluster, which Envoy answers
/// with 503 NC, as Istio does (D-03).
pub fn destination_cluster(d: &Destination, vs_namespace: &str, ctx: &RouteContext<'_>) -> String {
    let host = resolve_host(&d.host, vs_namespace);
    let port = match &d.port {
        Some(p) => u16::try_from(p.number).unwrap_or(ctx.port),
        None => match ctx.snapshot.service(&host) {
            Some(s) if s.ports.len() == 1 => s.ports[0].port,
            _ => ctx.port,
        },
    };
    outbound_cluster_name(port, d.subset.as_deref().unwrap_or(""), &host)
}

fn translate_match(m: &HttpMatchRequest) -> RouteMatch {
    let path = match m.uri.as_ref().and_then(StringMatch::kind) {
        Some(StringMatchKind::Exact(p)) => PathSpecifier::Path(p.to_string()),
        Some(StringMatchKind::Prefix(p)) => PathSpecifier::Prefix(p.to_string()),
        Some(StringMatchKind::Regex(r)) => PathSpecifier::SafeRegex(regex(r)),
        Some(StringMatchKind::Present) | None => PathSpecifier::Prefix("/".into()),
    };
    let mut out = RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        ..Default::default()
    };
    for (name, sm) in [(":method", &m.method), (":authority", &m.authority), (":scheme", &m.scheme)] {
        if let Some(sm) = sm {
            out.headers.push(header_matcher(name, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        out.headers.push(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        out.headers.push(header_matcher(name, sm, true));
    }
    for (name, sm) in &m.query_params {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match sm.kind() {
                Some(StringMatchKind::Present) | None => QueryParameterMatchSpecifier::PresentMatch(true),
                Some(kind) => QueryParameterMatchSpecifier::StringMatch(string_matcher(kind)),
            }),
        });
    }
    out
}

/// M-05/M-06: names are lower-cased; `{}` or regex `*` is presence; inverted
/// matches treat a missing header as empty.
fn header_matcher(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatcher {
    let specifier = match sm.kind() {
        Some(StringMatchKind::Present) | None => HeaderMatchSpecifier::PresentMatch(true),
        Some(kind) => HeaderMatchSpecifier::StringMatch(string_matcher(kind)),
    };
    let presence = matches!(specifier, HeaderMatchSpecifier::PresentMatch(_));
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        header_match_specifier: Some(specifier),
        invert_match: invert,
        treat_missing_header_as_empty: invert && !presence,
    }
}

fn string_matcher(kind: StringMatchKind<'_>) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match kind {
            StringMatchKind::Exact(s) => MatchPattern::Exact(s.to_string()),
            StringMatchKind::Prefix(s) => MatchPattern::Prefix(s.to_string()),
            StringMatchKind::Regex(r) => MatchPattern::SafeRegex(regex(r)),
            StringMatchKind::Present => MatchPattern::SafeRegex(regex(".*")),
        }),
        ignore_case: false,
    }
}

fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher { regex: pattern.to_string(), ..Default::default() }
}

/// Envoy cannot take the redirect port from the request, but routes are
/// built per listener port, so `derivePort: FROM_REQUEST_PORT` is that port.
fn translate_redirect(r: &meshplane_model::networking::HttpRedirect, listener_port: u16) -> RedirectAction {
    use redirect_action::RedirectResponseCode as Code;
    let code = match r.redirect_code.unwrap_or(301) {
        302 => Code::Found,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        _ => Code::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect: match (r.port, r.derive_port.as_deref()) {
            (Some(port), _) => port,
            (None, Some("FROM_REQUEST_PORT")) => u32::from(listener_port),
            (None, _) => 0,
        },
        path_rewrite_specifier: r.uri.clone().map(redirect_action::PathRewriteSpecifier::PathRedirect),
        scheme_rewrite_specifier: r.scheme.clone().map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        response_code: code as i32,
        ..Default::default()
    }
}

/// Header operations: `set` overwrites, `add` appends; setting `:authority`
/// or `host` rewrites the authority instead.
fn apply_header_operations(route: &mut Route, headers: &Headers, authority: &mut Option<String>) {
    if let Some(req) = &headers.request {
        route.request_headers_to_add.extend(header_options(req, authority));
        route.request_headers_to_remove.extend(removable(&req.remove));
    }
    if let Some(resp) = &headers.response {
        route.response_headers_to_add.extend(header_options(resp, &mut None));
        route.response_headers_to_remove.extend(removable(&resp.remove));
    }
}

fn header_options(ops: &HeaderOperations, authority: &mut Option<String>) -> Vec<HeaderValueOption> {
    let mut out = Vec::new();
    for (values, action) in
        [(&ops.set, HeaderAppendAction::OverwriteIfExistsOrAdd), (&ops.add, HeaderAppendAction::AppendIfExistsOrAdd)]
    {
        for (key, value) in values {
            let lower = key.to_ascii_lowercase();
            if lower == ":authority" || lower == "host" {
                authority.get_or_insert_with(|| value.clone());
                continue;
            }
            if lower.starts_with(':') {
                continue; // other pseudo-headers cannot be set (Envoy rejects them); Istio ignores them
            }
            out.push(HeaderValueOption {
                header: Some(HeaderValue { key: key.clone(), value: value.clone(), ..Default::default() }),
                append_action: action as i32,
                ..Default::default()
            });
        }
    }
    out
}

/// Removing `host` or a pseudo-header is ignored.
fn removable(names: &[String]) -> Vec<String> {
    names.iter().filter(|n| !n.starts_with(':') && !n.eq_ignore_ascii_case("host")).cloned().collect()
}

/// Inbound routes retry only resets before the request reached the app,
/// except on gRPC ports.
pub fn inbound_route(cluster: String, grpc: bool) -> Route {
    let retry = (!grpc).then(|| RetryPolicy {
        retry_on: "reset-before-request".into(),
        num_retries: Some(UInt32Value { value: 2 }),
        ..Default::default()
    });
    let mut action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
        retry_policy: retry,
        ..Default::default()
    };
    set_timeout(&mut action, Duration::ZERO, false);
    Route {
        name: "default".into(),
        r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() }),
        action: Some(route::route::Action::Route(action)),
        ..Default::default()
    }
}
