//! Human-readable dumps of proxy views for `/debug/config_dump`.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;
use serde_json::{Value, json};

use crate::resources::{ProxyView, Resource, ResourceType};

fn decoded(ty: ResourceType, r: &Resource) -> String {
    let body = &r.body[..];
    let text = match ty {
        ResourceType::Cluster => Cluster::decode(body).map(|m| format!("{m:?}")),
        ResourceType::Endpoint => ClusterLoadAssignment::decode(body).map(|m| format!("{m:?}")),
        ResourceType::Listener => Listener::decode(body).map(|m| format!("{m:?}")),
        ResourceType::Route => RouteConfiguration::decode(body).map(|m| format!("{m:?}")),
        ResourceType::Secret => Ok("(secret contents are not shown)".to_string()),
    };
    text.unwrap_or_else(|e| format!("(undecodable: {e})"))
}

/// Every resource of a view with its name, version, size and decoded contents
/// (protobuf debug text). `include_bodies: false` leaves out the contents.
pub fn view_json(view: &ProxyView, include_bodies: bool) -> Value {
    let mut types = serde_json::Map::new();
    for ty in ResourceType::ALL {
        let resources: Vec<Value> = view
            .resources(ty)
            .values()
            .map(|r| {
                let mut entry = json!({"name": &*r.name, "version": &*r.version, "bytes": r.body.len()});
                if include_bodies {
                    entry["config"] = Value::String(decoded(ty, r));
                }
                entry
            })
            .collect();
        types.insert(ty.short().to_string(), Value::Array(resources));
    }
    json!({"revision": view.revision, "resources": types})
}
