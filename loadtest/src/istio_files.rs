//! The `istio-files` flavor of a generated mesh: the same services,
//! workloads, Sidecars, DestinationRules and VirtualServices as the default
//! (Kubernetes) flavor, but with every Kubernetes Service written as a
//! ServiceEntry and every Pod as a WorkloadEntry. Only Istio kinds, so a
//! control plane that reads only Istio configuration from files (istiod
//! `--configDir DIR`, whose Kubernetes registry is then left empty: see
//! bench/istiod.sh) serves the same mesh as `meshplane up --config-dir DIR`,
//! which reads both forms.
//!
//! ```text
//!  Service svc-3 (clusterIP, selector app=svc-3, ports http 8080 [+ tcp-db 5432])
//!    ─▶ ServiceEntry svc-3: hosts [svc-3.NS.svc.cluster.local], addresses [clusterIP],
//!       MESH_INTERNAL, STATIC, the same ports (protocol from the name), workloadSelector app=svc-3
//!  Pod svc-3-v1-… (podIP, labels app/version, serviceAccountName)
//!    ─▶ WorkloadEntry svc-3-v1-…: address podIP, the same labels and service account
//! ```
//!
//! The change driver is unchanged: moving a pod rewrites the service's file,
//! which here moves a WorkloadEntry's address. The EDS cluster names
//! (`outbound|8080||HOST`) and the endpoint (`IP:8080`) a probe looks for are
//! the same in both flavors.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::mesh::{HTTP_PORT, Mesh, ServiceDef, TCP_PORT};

/// In which form `loadtest gen-mesh` writes services and workloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// Kubernetes Services and Pods (served by `meshplane up --config-dir`).
    #[default]
    Kubernetes,
    /// ServiceEntries and WorkloadEntries only (served by istiod `--configDir`
    /// and by `meshplane up --config-dir`).
    IstioFiles,
}

/// The namespace of the ingress gateways, with their service's name and ports.
const GATEWAY_NAMESPACE: &str = "istio-system";
const GATEWAY_NAME: &str = "istio-ingressgateway";

/// One service's file: its ServiceEntry, a WorkloadEntry per pod, then the
/// DestinationRule and VirtualService shared with the Kubernetes flavor.
pub fn service_yaml(mesh: &Mesh, i: usize) -> String {
    let s = &mesh.services[i];
    let mut y = service_entry(s);
    for p in &s.pods {
        let labels = [("app", s.name.as_str()), ("version", p.version.as_str())];
        y.push_str("---\n");
        y.push_str(&workload_entry(&p.name, &s.namespace, p.ip, &labels, &s.name));
    }
    y.push_str(&mesh.traffic_yaml(i));
    y
}

/// The ingress gateways: a ServiceEntry with their pods as WorkloadEntries.
pub fn gateway_yaml(mesh: &Mesh) -> String {
    let host = format!("{GATEWAY_NAME}.{GATEWAY_NAMESPACE}.{}", crate::mesh::DOMAIN);
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {GATEWAY_NAME}, namespace: {GATEWAY_NAMESPACE}}}\nspec:\n  hosts: [{host}]\n  addresses: [10.63.255.1]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{name: http2, number: 80, protocol: HTTP2, targetPort: 8080}}\n  workloadSelector:\n    labels: {{istio: ingressgateway}}\n"
    );
    for g in 0..mesh.params.gateways {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 63, 0, 10)) + g as u32);
        y.push_str("---\n");
        y.push_str(&workload_entry(
            &format!("{GATEWAY_NAME}-{g}"),
            GATEWAY_NAMESPACE,
            ip,
            &[("istio", "ingressgateway")],
            GATEWAY_NAME,
        ));
    }
    y
}

fn service_entry(s: &ServiceDef) -> String {
    let (name, ns) = (&s.name, &s.namespace);
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec:\n  hosts: [{}]\n  addresses: [{}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{name: http, number: {HTTP_PORT}, protocol: HTTP, targetPort: {HTTP_PORT}}}\n",
        s.fqdn(),
        s.cluster_ip
    );
    if s.tcp {
        let _ = writeln!(y, "  - {{name: tcp-db, number: {TCP_PORT}, protocol: TCP, targetPort: {TCP_PORT}}}");
    }
    let _ = writeln!(y, "  workloadSelector:\n    labels: {{app: {name}}}");
    y
}

fn workload_entry(name: &str, ns: &str, ip: Ipv4Addr, labels: &[(&str, &str)], service_account: &str) -> String {
    let labels = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec:\n  address: {ip}\n  labels: {{{labels}}}\n  serviceAccount: {service_account}\n"
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use meshplane_model::meta::Kind;
    use meshplane_model::object::MeshObject;

    use super::*;
    use crate::mesh::MeshParams;
    use crate::probe::ProbeCheck;

    fn mesh(gateways: usize) -> Mesh {
        let mut mesh = Mesh::generate(MeshParams {
            services: 60,
            pods_per_service: 3,
            namespaces: 3,
            shared_share: 0.05,
            vs_share: 0.1,
            dr_share: 0.1,
            tcp_share: 0.2,
            gateways,
            no_sidecars: false,
        });
        mesh.flavor = Flavor::IstioFiles;
        mesh
    }

    fn yaml_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(p) = todo.pop() {
            if p.is_dir() {
                todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "yaml") {
                out.push(p);
            }
        }
        out.sort();
        out
    }

    /// Every object of the directory, parsed by meshplane's own parser, which
    /// must report no error (warnings are findings too: none expected).
    fn parse_dir(dir: &Path) -> Vec<MeshObject> {
        let mut objects = Vec::new();
        for p in yaml_files(dir) {
            let text = std::fs::read_to_string(&p).unwrap();
            let parsed = meshplane_model::parse::parse_yaml(&p.display().to_string(), &text);
            let findings: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
            assert!(findings.is_empty(), "{}: {findings:?}", p.display());
            objects.extend(parsed.objects.into_iter().map(|o| o.object));
        }
        objects
    }

    fn kinds(objects: &[MeshObject]) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for o in objects {
            *out.entry(o.kind().name()).or_default() += 1;
        }
        out
    }

    #[test]
    fn only_istio_kinds_and_one_entry_per_service_and_pod() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = mesh(2);
        mesh.write(dir.path()).unwrap();
        let objects = parse_dir(dir.path());
        let kinds = kinds(&objects);
        assert_eq!(kinds.get("ServiceEntry"), Some(&61), "{kinds:?}"); // 60 services + the gateways'
        assert_eq!(kinds.get("WorkloadEntry"), Some(&182), "{kinds:?}"); // 60 x 3 pods + 2 gateways
        assert_eq!(kinds.get("DestinationRule"), Some(&mesh.services.iter().filter(|s| s.dr).count()));
        assert_eq!(kinds.get("VirtualService"), Some(&mesh.services.iter().filter(|s| s.vs).count()));
        assert_eq!(kinds.get("Sidecar"), Some(&4), "{kinds:?}"); // 3 namespaces + the shared one
        for k8s in [Kind::Service, Kind::Pod, Kind::EndpointSlice] {
            assert_eq!(kinds.get(k8s.name()), None, "{} in an istio-files mesh: {kinds:?}", k8s.name());
        }
        // The workloads loadtest impersonates are the WorkloadEntries, by address.
        let proxies = crate::mesh::read_proxies(&dir.path().join("proxies.jsonl")).unwrap();
        assert_eq!(proxies.len(), 182);
        assert_eq!(Mesh::load(dir.path()).unwrap().flavor, Flavor::IstioFiles);
    }

    #[test]
    fn a_service_entry_selects_its_pods_and_keeps_the_service_ports_and_address() {
        let mesh = mesh(0);
        let i = mesh.services.iter().position(|s| s.tcp).expect("a service with a TCP port");
        let s = &mesh.services[i];
        let parsed = meshplane_model::parse::parse_yaml("svc.yaml", &service_yaml(&mesh, i));
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let mut entries = Vec::new();
        let mut workloads = Vec::new();
        for o in parsed.objects {
            match o.object {
                MeshObject::ServiceEntry(se) => entries.push(se),
                MeshObject::WorkloadEntry(we) => workloads.push(we),
                MeshObject::DestinationRule(_) | MeshObject::VirtualService(_) => {}
                other => panic!("unexpected {}", other.kind().name()),
            }
        }
        let [se] = &entries[..] else { panic!("{} ServiceEntries", entries.len()) };
        assert_eq!(se.spec.hosts, [s.fqdn()]);
        assert_eq!(se.spec.addresses, [s.cluster_ip.to_string()]);
        assert_eq!(se.spec.location.as_deref(), Some("MESH_INTERNAL"));
        assert_eq!(se.spec.resolution.as_deref(), Some("STATIC"));
        let ports: Vec<_> = se.spec.ports.iter().map(|p| (p.number, p.protocol.clone().unwrap())).collect();
        assert_eq!(ports, [(u32::from(HTTP_PORT), "HTTP".to_string()), (u32::from(TCP_PORT), "TCP".to_string())]);
        let selector = se.spec.workload_selector.as_ref().expect("a workload selector");
        assert_eq!(selector.labels, BTreeMap::from([("app".to_string(), s.name.clone())]));
        assert_eq!(workloads.len(), s.pods.len());
        for (we, pod) in workloads.iter().zip(&s.pods) {
            assert_eq!(we.metadata.name, pod.name);
            assert_eq!(we.spec.address, pod.ip.to_string());
            assert_eq!(we.spec.labels.get("app"), Some(&s.name));
            assert_eq!(we.spec.labels.get("version"), Some(&pod.version));
            assert_eq!(we.spec.service_account.as_deref(), Some(s.name.as_str()));
        }
    }

    #[test]
    fn moving_an_endpoint_moves_one_workload_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut mesh = mesh(0);
        mesh.write(dir.path()).unwrap();
        let path = dir.path().join(mesh.service_file(0).0);
        let before = std::fs::read_to_string(&path).unwrap();
        let probe = mesh.move_endpoint(0, 0);
        mesh.write_service(dir.path(), 0).unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        let ProbeCheck::Endpoint { cluster, address, port } = probe.check else { panic!("{:?}", probe.check) };
        assert_eq!(cluster, mesh.services[0].http_cluster());
        assert_eq!(port, u32::from(HTTP_PORT));
        assert!(!before.contains(&format!("address: {address}\n")) && after.contains(&format!("address: {address}\n")));
        let changed: Vec<_> = before.lines().zip(after.lines()).filter(|(a, b)| a != b).collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(changed[0].1.trim_start().starts_with("address: "), "{changed:?}");
        // The rewritten file is still valid, and still Istio kinds only.
        let objects = parse_dir(dir.path());
        assert!(objects.iter().all(|o| o.kind() != Kind::Pod));
    }
}
