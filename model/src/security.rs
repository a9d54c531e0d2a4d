//! Istio `security.istio.io` objects. meshplane stores them and keeps them
//! watchable, but does not enforce them yet (mTLS and authorization arrive with
//! the CA); the parser says so once per object, so nobody believes a policy is
//! in force when it is not.

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}
