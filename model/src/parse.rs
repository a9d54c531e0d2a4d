//! Kubernetes-style multi-document YAML to [`MeshObject`]s, with diagnostics
//! that name the file, the document, the object and the field.
//!
//! ```text
//!  text ──serde_yaml──▶ document Value ──(apiVersion, kind)──▶ typed object ──validate──▶ MeshObject
//!            │                 │                   │                 │
//!         syntax error    not a map / no kind   wrong type at     invalid value
//!         (error)         (error) unknown kind  field (error),    (error: object
//!                         (warning, skipped)    unknown or        rejected)
//!                                               unimplemented
//!                                               field (warning)
//! ```
//!
//! Policy on fields meshplane does not model:
//! - Istio kinds: every such field is reported as a warning, worded
//!   differently for Istio fields that meshplane does not implement yet and for
//!   fields that are not Istio's at all (a likely typo).
//! - Kubernetes kinds (Namespace, Node, Pod, Service, EndpointSlice): the
//!   cluster's own fields (container images, session affinity, ...) are
//!   dropped silently; they never change what a proxy is sent.
//! - `metadata` beyond name, namespace, labels, annotations and
//!   creationTimestamp, and `status` (except a Pod's), are dropped silently.

use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::meta::{Kind, ObjectRef};
use crate::object::MeshObject;
use crate::validate;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Applied anyway; something in it has no effect.
    Warning,
    /// The object (or document) is not applied.
    Error,
}

/// One finding about a user's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file (or other source) name.
    pub source: String,
    /// 1-based index of the YAML document in the source.
    pub document: usize,
    pub object: Option<ObjectRef>,
    /// Dotted field path, e.g. `spec.http[0].timeout`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{level}: {}: document {}", self.source, self.document)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// An object and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedObject {
    pub document: usize,
    pub object: MeshObject,
}

/// Everything read from one source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedFile {
    /// Objects that parsed and validated. Objects with errors are not here.
    pub objects: Vec<ParsedObject>,
    pub diagnostics: Vec<Diagnostic>,
}

impl ParsedFile {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Warning)
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

/// Parse every document of a YAML text. Never fails as a whole: problems are
/// in the diagnostics, and every good object is returned.
pub fn parse_yaml(source: &str, text: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let diag = |severity, message: String| Diagnostic {
            severity,
            source: source.to_string(),
            document: number,
            object: None,
            field: None,
            message,
        };
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                out.diagnostics.push(diag(Severity::Error, format!("invalid YAML: {e}")));
                // serde_yaml cannot resynchronise after a syntax error.
                break;
            }
        };
        parse_document(source, number, value, None, &mut out);
    }
    out
}

fn parse_document(source: &str, document: usize, value: serde_yaml::Value, item: Option<usize>, out: &mut ParsedFile) {
    let field_prefix = item.map(|i| format!("items[{i}]."));
    let mut diag = |severity, object: Option<ObjectRef>, field: Option<String>, message: String| {
        out.diagnostics.push(Diagnostic {
            severity,
            source: source.to_string(),
            document,
            object,
            field: match (&field_prefix, field) {
                (Some(p), Some(f)) => Some(format!("{p}{f}")),
                (Some(p), None) => Some(p.trim_end_matches('.').to_string()),
                (None, f) => f,
            },
            message,
        })
    };
    let map = match value {
        serde_yaml::Value::Null => return,
        serde_yaml::Value::Mapping(map) => map,
        _ => {
            diag(Severity::Error, None, None, "a document must be a map with apiVersion and kind".into());
            return;
        }
    };
    let text_field = |name: &str| map.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(api_version), Some(kind_name)) = (text_field("apiVersion"), text_field("kind")) else {
        diag(
            Severity::Error,
            None,
            None,
            "the document has no apiVersion and kind; every object needs both (e.g. apiVersion: networking.istio.io/v1, kind: VirtualService)".into(),
        );
        return;
    };
    if kind_name == "List" || kind_name.ends_with("List") && api_version == "v1" {
        match map.get("items") {
            Some(serde_yaml::Value::Sequence(items)) if item.is_none() => {
                for (i, value) in items.iter().enumerate() {
                    parse_document(source, document, value.clone(), Some(i), out);
                }
            }
            _ => diag(
                Severity::Error,
                None,
                Some("items".into()),
                "a List needs a sequence of items (nested lists are not supported)".into(),
            ),
        }
        return;
    }
    let Some(kind) = Kind::from_type(&api_version, &kind_name) else {
        if let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == kind_name) {
            diag(
                Severity::Error,
                None,
                Some("apiVersion".into()),
                format!(
                    "{kind_name} with apiVersion {api_version} is not supported; use one of {}",
                    kind.api_versions().join(", ")
                ),
            );
        } else {
            diag(
                Severity::Warning,
                None,
                None,
                format!("kind {kind_name} ({api_version}) is not used by meshplane; skipped"),
            );
        }
        return;
    };

    let metadata = map.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(|v| v.as_str()).unwrap_or("");
    let namespace = metadata.and_then(|m| m.get("namespace")).and_then(|v| v.as_str());
    let object_ref = ObjectRef {
        kind,
        namespace: kind.namespaced().then(|| namespace.unwrap_or("default").to_string()),
        name: name.to_string(),
    };
    if name.is_empty() {
        diag(Severity::Error, Some(object_ref), Some("metadata.name".into()), "every object needs a name".into());
        return;
    }
    if !kind.namespaced() && namespace.is_some() {
        diag(
            Severity::Warning,
            Some(object_ref.clone()),
            Some("metadata.namespace".into()),
            format!("{kind} is cluster-scoped; the namespace is ignored"),
        );
    }

    let mut ignored = Vec::new();
    let parsed = decode(kind, serde_yaml::Value::Mapping(map), &mut ignored);
    let mut object = match parsed {
        Ok(object) => object,
        Err((field, message)) => {
            diag(Severity::Error, Some(object_ref), field, message);
            return;
        }
    };
    {
        let meta = object.metadata_mut();
        meta.namespace = if kind.namespaced() { object_ref.namespace.clone() } else { None };
    }

    for path in ignored {
        if let Some(message) = ignored_field_message(kind, &path) {
            diag(Severity::Warning, Some(object_ref.clone()), Some(path), message);
        }
    }
    if matches!(kind, Kind::Gateway | Kind::PeerAuthentication | Kind::AuthorizationPolicy) {
        diag(
            Severity::Warning,
            Some(object_ref.clone()),
            None,
            format!("{kind} is stored but not enforced by meshplane yet; it has no effect on proxies"),
        );
    }

    let mut rejected = false;
    for finding in validate::validate(&object) {
        rejected |= finding.severity == Severity::Error;
        diag(finding.severity, Some(object_ref.clone()), Some(finding.field), finding.message);
    }
    if !rejected {
        out.objects.push(ParsedObject { document, object });
    }
}

/// Typed decoding, collecting the paths of fields the types do not have.
fn decode(
    kind: Kind,
    value: serde_yaml::Value,
    ignored: &mut Vec<String>,
) -> Result<MeshObject, (Option<String>, String)> {
    fn typed<T: DeserializeOwned>(
        value: serde_yaml::Value,
        ignored: &mut Vec<String>,
    ) -> Result<T, (Option<String>, String)> {
        let mut record = |path: serde_ignored::Path<'_>| ignored.push(field_path(&path));
        let de = serde_ignored::Deserializer::new(value, &mut record);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = (path != "." && !path.is_empty()).then_some(path);
            (field, e.into_inner().to_string())
        })
    }
    Ok(match kind {
        Kind::Namespace => MeshObject::Namespace(typed(value, ignored)?),
        Kind::Node => MeshObject::Node(typed(value, ignored)?),
        Kind::Pod => MeshObject::Pod(typed(value, ignored)?),
        Kind::Service => MeshObject::Service(typed(value, ignored)?),
        Kind::EndpointSlice => MeshObject::EndpointSlice(typed(value, ignored)?),
        Kind::ServiceEntry => MeshObject::ServiceEntry(typed(value, ignored)?),
        Kind::WorkloadEntry => MeshObject::WorkloadEntry(typed(value, ignored)?),
        Kind::VirtualService => MeshObject::VirtualService(typed(value, ignored)?),
        Kind::DestinationRule => MeshObject::DestinationRule(typed(value, ignored)?),
        Kind::Sidecar => MeshObject::Sidecar(typed(value, ignored)?),
        Kind::Gateway => MeshObject::Gateway(typed(value, ignored)?),
        Kind::PeerAuthentication => MeshObject::PeerAuthentication(typed(value, ignored)?),
        Kind::AuthorizationPolicy => MeshObject::AuthorizationPolicy(typed(value, ignored)?),
    })
}

/// `spec.http[0].fault` from serde_ignored's path.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() { key.clone() } else { format!("{parent}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// Istio fields meshplane knows of but does not implement yet.
const UNIMPLEMENTED_ISTIO_FIELDS: &[&str] = &[
    "tls",
    "fault",
    "mirror",
    "mirrors",
    "mirrorPercentage",
    "mirrorPercent",
    "mirror_percent",
    "corsPolicy",
    "delegate",
    "directResponse",
    "statPrefix",
    "retryRemoteLocalities",
    "retryIgnorePreviousHosts",
    "backoff",
    "connectionPool",
    "outlierDetection",
    "tunnel",
    "proxyProtocol",
    "consistentHash",
    "localityLbSetting",
    "warmupDurationSecs",
    "warmup",
    "inboundConnectionPool",
    "subjectAltNames",
    "destinationSubnets",
    "sourceSubnet",
    "exportTo",
];

/// The warning for a field the types dropped, or `None` if it is dropped silently.
fn ignored_field_message(kind: Kind, path: &str) -> Option<String> {
    let top = path.split(['.', '[']).next().unwrap_or("");
    if matches!(top, "metadata" | "apiVersion" | "kind") {
        return None;
    }
    if top == "status" && kind != Kind::Pod {
        return None;
    }
    if matches!(kind, Kind::Namespace | Kind::Node | Kind::Pod | Kind::Service | Kind::EndpointSlice) {
        return None;
    }
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    Some(if UNIMPLEMENTED_ISTIO_FIELDS.contains(&last) {
        format!("{last} is not implemented by meshplane yet; it is ignored and has no effect")
    } else {
        format!("{last} is not a field of {kind} (misspelled?); it is ignored")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml_with_defaults() {
        let parsed = parse_yaml(
            "mesh.yaml",
            r#"
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  ports: [{name: http, port: 9080}]
---
# a comment-only document
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
"#,
        );
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        assert_eq!(parsed.objects.len(), 2);
        assert_eq!(parsed.objects[0].object.metadata().namespace.as_deref(), Some("default"));
        assert_eq!(parsed.objects[1].document, 3);
        assert_eq!(parsed.objects[1].object.object_ref().to_string(), "VirtualService shop/reviews");
    }

    #[test]
    fn type_errors_name_file_document_object_and_field() {
        let parsed = parse_yaml(
            "bad.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [r]\n  http:\n  - retries: {attempts: lots}\n",
        );
        assert!(parsed.objects.is_empty());
        let err = parsed.errors().next().expect("an error");
        let text = err.to_string();
        assert!(text.contains("bad.yaml"), "{text}");
        assert!(text.contains("document 1"), "{text}");
        assert!(text.contains("VirtualService shop/r"), "{text}");
        assert_eq!(err.field.as_deref(), Some("spec.http[0].retries.attempts"), "{text}");
    }

    #[test]
    fn unknown_and_unimplemented_istio_fields_are_warnings() {
        let parsed = parse_yaml(
            "w.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - fault: {abort: {httpStatus: 418}}\n    rout: []\n    route: [{destination: {host: r}}]\n",
        );
        assert_eq!(parsed.objects.len(), 1, "{:?}", parsed.diagnostics);
        let warnings: Vec<String> = parsed.warnings().map(|d| d.to_string()).collect();
        assert!(
            warnings.iter().any(|w| w.contains("spec.http[0].fault") && w.contains("not implemented")),
            "{warnings:?}"
        );
        assert!(warnings.iter().any(|w| w.contains("spec.http[0].rout") && w.contains("misspelled")), "{warnings:?}");
    }

    #[test]
    fn kubernetes_noise_is_dropped_silently_and_foreign_kinds_are_skipped() {
        let parsed = parse_yaml(
            "k.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, uid: x, managedFields: []}\nspec:\n  containers: [{name: c, image: nginx}]\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        );
        assert_eq!(parsed.objects.len(), 1);
        let warnings: Vec<String> = parsed.warnings().map(|d| d.to_string()).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("Deployment") && warnings[0].contains("skipped"));
    }

    #[test]
    fn structural_problems_are_errors() {
        let cases = [
            ("- a\n- b\n", "must be a map"),
            ("kind: Service\n", "no apiVersion and kind"),
            ("apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: x}\n", "not supported"),
            ("apiVersion: v1\nkind: Service\nmetadata: {}\n", "needs a name"),
            ("apiVersion: v1\nkind: Service\nmetadata: {name: [}\n", "invalid YAML"),
        ];
        for (text, expect) in cases {
            let parsed = parse_yaml("x.yaml", text);
            let errors: Vec<String> = parsed.errors().map(|d| d.to_string()).collect();
            assert!(errors.iter().any(|e| e.contains(expect)), "{text:?}: {errors:?}");
        }
    }

    #[test]
    fn lists_are_expanded() {
        let parsed = parse_yaml(
            "list.yaml",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: shop}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: shop}\n",
        );
        assert_eq!(parsed.objects.len(), 2, "{:?}", parsed.diagnostics);
    }

    #[test]
    fn round_trips_through_store_json() {
        let parsed = parse_yaml(
            "rt.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: shop}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n",
        );
        let object = &parsed.objects[0].object;
        let json = object.to_json();
        assert_eq!(&MeshObject::from_json(Kind::DestinationRule, &json).unwrap(), object);
    }
}
