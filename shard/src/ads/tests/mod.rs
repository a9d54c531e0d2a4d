//! Tests of the ADS protocol cores (synchronous) and of the tonic edge
//! (in-process, over loopback TCP).

use std::sync::Arc;

use bytes::Bytes;

use crate::resources::{ProxyView, Resource, ResourceType, content_version};

mod delta;
mod grpc;
mod response;
mod sotw;

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::Endpoint;
const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::Route;

/// Builds a view whose resources' bodies are the given strings.
#[derive(Default)]
struct ViewBuilder(ProxyView);

fn view(revision: i64) -> ViewBuilder {
    ViewBuilder(ProxyView { revision, ..Default::default() })
}

impl ViewBuilder {
    fn with(mut self, ty: ResourceType, name: &str, body: &str) -> Self {
        self.0.insert(ty, Resource::from_bytes(name, Bytes::copy_from_slice(body.as_bytes())));
        self
    }

    fn build(self) -> Arc<ProxyView> {
        Arc::new(self.0)
    }
}

/// The same content in new allocations, bypassing `Resource::from_bytes`
/// (which would hand back the live ones): what a rebuild looked like before
/// resources were shared by content, and still the worst case.
fn reallocated(view: &ProxyView) -> Arc<ProxyView> {
    let mut copy = ProxyView { revision: view.revision + 1, ..Default::default() };
    for ty in ResourceType::ALL {
        for r in view.resources(ty).values() {
            copy.insert(ty, Arc::new((**r).clone()));
        }
    }
    Arc::new(copy)
}

/// A mesh with two clusters (with endpoints), one listener and one route.
fn mesh(revision: i64) -> ViewBuilder {
    view(revision)
        .with(CDS, "c1", "cluster one")
        .with(CDS, "c2", "cluster two")
        .with(EDS, "c1", "endpoints one")
        .with(EDS, "c2", "endpoints two")
        .with(LDS, "l1", "listener one")
        .with(RDS, "r1", "route one")
}

fn s(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The version a resource with this body gets.
fn version(body: &str) -> String {
    content_version(body.as_bytes())
}
