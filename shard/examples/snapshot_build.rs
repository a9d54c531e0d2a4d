//! Time `MeshSnapshot::build` on a directory of YAML (e.g. one made by
//! `loadtest gen-mesh`): the work every store change costs a shard before
//! any class is generated.
//!
//! `cargo run --release -p meshplane-shard --example snapshot_build -- DIR [RUNS]`

use std::time::Instant;

use meshplane_model::key::ObjectKey;
use meshplane_model::parse::parse_yaml;
use meshplane_shard::snapshot::{MeshSnapshot, MeshState};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: snapshot_build DIR [RUNS]");
    let runs: usize = args.next().map_or(7, |r| r.parse().expect("RUNS is a number"));
    let mut state = MeshState::default();
    let mut files: Vec<_> = walk(std::path::Path::new(&dir));
    files.sort();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable YAML");
        for o in parse_yaml(&file.display().to_string(), &text).objects {
            state.apply(ObjectKey::new("Kubernetes", o.object.object_ref()), o.object);
        }
    }
    let mut times = Vec::new();
    let mut services = 0;
    let mut endpoints = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let snapshot = MeshSnapshot::build(&state, 1);
        times.push(start.elapsed());
        services = snapshot.services.len();
        endpoints = snapshot.endpoints.values().map(Vec::len).sum();
    }
    times.sort();
    println!(
        "{} objects, {services} services, {endpoints} endpoints: MeshSnapshot::build median {:?} (min {:?}, max {:?}, {runs} runs)",
        state.len(),
        times[runs / 2],
        times[0],
        times[runs - 1]
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out
}
