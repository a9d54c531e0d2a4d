//! [`DirectoryState`]: the sans-IO core of the directory source.
//!
//! File contents go in ([`DirectoryState::update`]); the desired object set,
//! the diagnostics and the minimal store operations against what the store
//! holds come out ([`DirectoryState::reconcile`]). Nothing here touches the
//! filesystem, the clock or the store: the async edge feeds it and applies
//! its operations.
//!
//! ```text
//!  update(path, Content|Unreadable|Gone)        load_store(kvs)   (once, at startup)
//!         │                                            │
//!         ▼                                            ▼
//!  files: path ─▶ { version, diagnostics,       held: startup keys no file accounts for
//!                   last_good objects }                │
//!         │   (path order; first definition wins)      │ (only while a file has never
//!         ▼                                            │  parsed cleanly)
//!  desired: key ─▶ (json, origin)  ◀───────────────────┘
//!         │
//!         ▼  diff against `stored` (what the store holds, as far as we know)
//!  reconcile() ─▶ ops (puts of changed JSON, deletes of vanished keys) ─▶ edge: Store::batch
//!                                                                             │
//!  applied(ops) ◀─────────────────────────────────────────── on success ──────┘
//! ```
//!
//! ## Rules
//! - **A file is applied all or nothing.** A file whose current content has
//!   any error (YAML syntax, an invalid object, unreadable, not UTF-8) changes
//!   nothing: the objects of its last content without errors stay served
//!   until it parses cleanly again. A file that has never parsed cleanly
//!   serves nothing. Half-applying a file could serve a VirtualService whose
//!   DestinationRule subset was in the rejected part, so the rule keeps
//!   related objects together. Warnings never block a file.
//! - **Conflicts:** when an object (kind, namespace, name) is defined more than
//!   once, in one file or in several, the first definition in (path, document)
//!   order is served and every other one is reported as an error naming both
//!   places. Path order is byte order of the path, so the winner does not
//!   depend on the order in which files were written.
//! - **The source owns the cluster's keys.** Keys under the cluster prefix
//!   that no file defines are deleted, except that keys found in the store at
//!   startup are *held* (left as they are) while some file has errors and has
//!   not parsed cleanly since startup: its objects may be among them, and a
//!   restart must not withdraw config that was being served. They are deleted
//!   once every file has parsed cleanly (or been removed).
//! - **Minimal changes:** a put only for a key whose JSON differs from what the
//!   store holds, a delete only for a key the store holds; a file renamed, or an
//!   object moved between files, in one reconciliation produces no operation.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use bytes::Bytes;
use meshplane_model::ObjectRef;
use meshplane_model::key::{ObjectKey, cluster_prefix};
use meshplane_model::parse::{Diagnostic, Severity, parse_yaml};
use meshplane_store::Op;
use xxhash_rust::xxh3::xxh3_64;

/// What a scan found at one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileInput {
    /// The file's bytes.
    Content(Vec<u8>),
    /// The file exists but could not be read, for this reason.
    Unreadable(String),
    /// The file no longer exists (or is no longer a configuration file).
    Gone,
}

/// Which content of a file is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// The current content has no errors and is served.
    Clean,
    /// The current content has errors; the last content without errors is served.
    KeepingLastGood,
    /// The current content has errors and the file never parsed cleanly: nothing is served.
    NotApplied,
}

/// What happened to one file in a reconciliation, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    pub path: String,
    pub outcome: FileOutcome,
    /// Diagnostics of the new content (empty for a removed file).
    pub diagnostics: Vec<Diagnostic>,
}

/// The result of a file's change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    /// The new content is served; it has this many objects.
    Applied { objects: usize },
    /// The new content has errors; the last good content (this many objects) stays served.
    KeptLastGood { objects: usize },
    /// The new content has errors and there is no good content to keep: nothing is served.
    NotApplied,
    /// The file is gone; its objects (this many) are withdrawn.
    Removed { objects: usize },
}

/// What [`DirectoryState::reconcile`] asks of the store, and what to report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Apply as one atomic batch, then call [`DirectoryState::applied`].
    pub ops: Vec<Op>,
    /// Files whose content changed since the last reconciliation.
    pub reports: Vec<FileReport>,
    /// Conflicts that appeared since the last reconciliation.
    pub new_conflicts: Vec<Diagnostic>,
    /// Conflicts that are gone since the last reconciliation.
    pub resolved_conflicts: Vec<Diagnostic>,
    /// Keys found in the store at startup that are now deleted because every
    /// file parses cleanly (only non-zero once).
    pub released_held: usize,
}

/// One file, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSummary {
    pub path: String,
    pub state: FileState,
    /// Objects served from this file (including conflicting definitions that lost).
    pub objects: usize,
    pub errors: usize,
    pub warnings: usize,
}

/// Counts and current diagnostics, for status and debug endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Configuration files seen.
    pub files: usize,
    /// Files whose current content has errors.
    pub files_with_errors: usize,
    /// Objects in the desired set (what the store should hold).
    pub objects: usize,
    /// Of those, objects kept from the store at startup (see the module docs).
    pub held_from_store: usize,
    /// Objects defined more than once.
    pub conflicts: usize,
    /// Every current diagnostic: each file's (in path order), then conflicts.
    pub diagnostics: Vec<Diagnostic>,
    pub file_summaries: Vec<FileSummary>,
}

/// Identifies a file's content, so unchanged content is not parsed again.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Version {
    Content(u64),
    Unreadable(String),
}

/// One object of a file's good content.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileObject {
    object: ObjectRef,
    key: String,
    document: usize,
    value: Bytes,
}

#[derive(Clone, Debug)]
struct FileEntry {
    version: Version,
    diagnostics: Vec<Diagnostic>,
    /// The objects of the last content without errors; `None` if there never was one.
    last_good: Option<Vec<FileObject>>,
}

impl FileEntry {
    fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    fn state(&self) -> FileState {
        match (self.has_errors(), &self.last_good) {
            (false, _) => FileState::Clean,
            (true, Some(_)) => FileState::KeepingLastGood,
            (true, None) => FileState::NotApplied,
        }
    }

    fn served(&self) -> &[FileObject] {
        self.last_good.as_deref().unwrap_or_default()
    }
}

/// Where a desired object comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    File {
        path: String,
        document: usize,
    },
    /// Held from the store at startup.
    Store,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Desired {
    value: Bytes,
    origin: Origin,
}

/// The directory's files and the object set they define. See the module docs.
#[derive(Debug)]
pub struct DirectoryState {
    cluster: String,
    prefix: String,
    files: BTreeMap<String, FileEntry>,
    /// Keys found in the store at startup that no file has defined since.
    held: BTreeMap<String, Bytes>,
    /// What the store holds under the cluster prefix, as far as we know.
    stored: BTreeMap<String, Bytes>,
    desired: BTreeMap<String, Desired>,
    conflicts: Vec<Diagnostic>,
    pending_reports: Vec<FileReport>,
}

impl DirectoryState {
    /// An empty directory for `cluster` (a valid cluster id, see
    /// [`meshplane_model::key::valid_cluster_id`]), with an empty store.
    pub fn new(cluster: &str) -> DirectoryState {
        DirectoryState {
            cluster: cluster.to_string(),
            prefix: cluster_prefix(cluster),
            files: BTreeMap::new(),
            held: BTreeMap::new(),
            stored: BTreeMap::new(),
            desired: BTreeMap::new(),
            conflicts: Vec::new(),
            pending_reports: Vec::new(),
        }
    }

    /// The cluster this directory fills.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Tell the core what the store holds under the cluster prefix (keys
    /// outside it are ignored). Call once, before the first
    /// [`reconcile`](Self::reconcile): these keys become the *held* set.
    pub fn load_store(&mut self, kvs: impl IntoIterator<Item = (String, Bytes)>) {
        self.stored = kvs.into_iter().filter(|(key, _)| key.starts_with(&self.prefix)).collect();
        self.held = self.stored.clone();
    }

    /// Record what a scan found at `path`. Content identical to the last one
    /// seen is not parsed again.
    pub fn update(&mut self, path: &str, input: FileInput) {
        let version = match &input {
            FileInput::Content(bytes) => Version::Content(xxh3_64(bytes)),
            FileInput::Unreadable(reason) => Version::Unreadable(reason.clone()),
            FileInput::Gone => {
                if let Some(old) = self.files.remove(path) {
                    self.pending_reports.push(FileReport {
                        path: path.to_string(),
                        outcome: FileOutcome::Removed { objects: old.served().len() },
                        diagnostics: Vec::new(),
                    });
                }
                return;
            }
        };
        let previous = self.files.get(path);
        if previous.is_some_and(|p| p.version == version) {
            return;
        }
        let last_good = previous.and_then(|p| p.last_good.clone());
        let (diagnostics, objects) = match input {
            FileInput::Content(bytes) => self.parse(path, bytes),
            FileInput::Unreadable(reason) => {
                (vec![file_error(path, format!("cannot read the file: {reason}; check its permissions"))], Vec::new())
            }
            FileInput::Gone => unreachable!("handled above"),
        };
        let mut entry = FileEntry { version, diagnostics, last_good };
        let outcome = if entry.has_errors() {
            match &entry.last_good {
                Some(good) => FileOutcome::KeptLastGood { objects: good.len() },
                None => FileOutcome::NotApplied,
            }
        } else {
            let count = objects.len();
            entry.last_good = Some(objects);
            FileOutcome::Applied { objects: count }
        };
        self.pending_reports.push(FileReport {
            path: path.to_string(),
            outcome,
            diagnostics: entry.diagnostics.clone(),
        });
        self.files.insert(path.to_string(), entry);
    }

    fn parse(&self, path: &str, bytes: Vec<u8>) -> (Vec<Diagnostic>, Vec<FileObject>) {
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                return (
                    vec![file_error(
                        path,
                        format!(
                            "the file is not UTF-8 (invalid byte at offset {}); save it as UTF-8",
                            e.utf8_error().valid_up_to()
                        ),
                    )],
                    Vec::new(),
                );
            }
        };
        let parsed = parse_yaml(path, &text);
        let objects = parsed
            .objects
            .iter()
            .map(|p| {
                let object = p.object.object_ref();
                FileObject {
                    key: ObjectKey::new(self.cluster.clone(), object.clone()).encode(),
                    object,
                    document: p.document,
                    value: Bytes::from(p.object.to_json()),
                }
            })
            .collect();
        (parsed.diagnostics, objects)
    }

    /// Compute the desired object set and the store operations that bring the
    /// store to it. Until [`applied`](Self::applied) is called the store is
    /// assumed unchanged, so after a failed batch the next call returns the
    /// same operations (plus any newer changes).
    pub fn reconcile(&mut self) -> Reconciliation {
        let mut desired: BTreeMap<String, Desired> = BTreeMap::new();
        let mut conflicts = Vec::new();
        for (path, entry) in &self.files {
            for object in entry.served() {
                match desired.entry(object.key.clone()) {
                    Entry::Vacant(slot) => {
                        slot.insert(Desired {
                            value: object.value.clone(),
                            origin: Origin::File { path: path.clone(), document: object.document },
                        });
                    }
                    Entry::Occupied(winner) => {
                        conflicts.push(conflict(path, object, &winner.get().origin));
                    }
                }
            }
        }

        // Held keys: accounted for once a file defines them; released once no
        // file is left that might define them unseen.
        self.held.retain(|key, _| !desired.contains_key(key));
        let unsettled = self.files.values().any(|f| f.state() == FileState::NotApplied);
        let mut released_held = 0;
        if unsettled {
            for (key, value) in &self.held {
                desired.insert(key.clone(), Desired { value: value.clone(), origin: Origin::Store });
            }
        } else {
            released_held = self.held.len();
            self.held.clear();
        }

        let mut ops = Vec::new();
        for (key, want) in &desired {
            if self.stored.get(key) != Some(&want.value) {
                ops.push(Op::Put { key: key.clone(), value: want.value.clone() });
            }
        }
        for key in self.stored.keys() {
            if !desired.contains_key(key) {
                ops.push(Op::Delete { key: key.clone() });
            }
        }

        let new_conflicts = conflicts.iter().filter(|c| !self.conflicts.contains(c)).cloned().collect();
        let resolved_conflicts = self.conflicts.iter().filter(|c| !conflicts.contains(c)).cloned().collect();
        self.conflicts = conflicts;
        self.desired = desired;
        Reconciliation {
            ops,
            reports: std::mem::take(&mut self.pending_reports),
            new_conflicts,
            resolved_conflicts,
            released_held,
        }
    }

    /// Record that `ops` (from [`reconcile`](Self::reconcile)) are in the store.
    pub fn applied(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    self.stored.insert(key.clone(), value.clone());
                }
                Op::Delete { key } => {
                    self.stored.remove(key);
                }
            }
        }
    }

    /// The desired object set as of the last reconciliation: store key and JSON.
    pub fn desired(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.desired.iter().map(|(k, d)| (k.as_str(), &d.value))
    }

    /// Counts and current diagnostics as of the last reconciliation (file
    /// diagnostics as of the last update).
    pub fn summary(&self) -> Summary {
        let mut diagnostics: Vec<Diagnostic> =
            self.files.values().flat_map(|f| f.diagnostics.iter().cloned()).collect();
        diagnostics.extend(self.conflicts.iter().cloned());
        let file_summaries: Vec<FileSummary> = self
            .files
            .iter()
            .map(|(path, f)| FileSummary {
                path: path.clone(),
                state: f.state(),
                objects: f.served().len(),
                errors: count(&f.diagnostics, Severity::Error),
                warnings: count(&f.diagnostics, Severity::Warning),
            })
            .collect();
        Summary {
            files: self.files.len(),
            files_with_errors: self.files.values().filter(|f| f.has_errors()).count(),
            objects: self.desired.len(),
            held_from_store: self.desired.values().filter(|d| d.origin == Origin::Store).count(),
            conflicts: self.conflicts.len(),
            diagnostics,
            file_summaries,
        }
    }
}

fn count(diagnostics: &[Diagnostic], severity: Severity) -> usize {
    diagnostics.iter().filter(|d| d.severity == severity).count()
}

/// An error about a file as a whole.
fn file_error(path: &str, message: String) -> Diagnostic {
    Diagnostic { severity: Severity::Error, source: path.to_string(), document: 1, object: None, field: None, message }
}

fn conflict(path: &str, object: &FileObject, winner: &Origin) -> Diagnostic {
    let served = match winner {
        Origin::File { path, document } => format!("{path} document {document}"),
        Origin::Store => "the store".to_string(),
    };
    Diagnostic {
        severity: Severity::Error,
        source: path.to_string(),
        document: object.document,
        object: Some(object.object.clone()),
        field: None,
        message: format!(
            "{} is also defined in {served}, which is served (the first definition in path order wins); this definition is ignored: remove one of them",
            object.object
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "Kubernetes";

    fn service(name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  ports: [{{port: {port}}}]\n"
        )
    }

    fn docs(parts: &[String]) -> FileInput {
        FileInput::Content(parts.join("---\n").into_bytes())
    }

    fn key(name: &str) -> String {
        format!("/meshplane/v1/clusters/{CLUSTER}/services/shop/{name}")
    }

    /// Keys put and deleted, in op order.
    fn summarize(ops: &[Op]) -> (Vec<&str>, Vec<&str>) {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, .. } => puts.push(key.as_str()),
                Op::Delete { key } => deletes.push(key.as_str()),
            }
        }
        (puts, deletes)
    }

    /// Reconcile and pretend the store applied the ops.
    fn step(state: &mut DirectoryState) -> Reconciliation {
        let r = state.reconcile();
        state.applied(&r.ops);
        r
    }

    fn loaded(files: &[(&str, FileInput)]) -> DirectoryState {
        let mut state = DirectoryState::new(CLUSTER);
        for (path, input) in files {
            state.update(path, input.clone());
        }
        step(&mut state);
        state
    }

    fn port_of(state: &DirectoryState, name: &str) -> String {
        let key = key(name);
        let (_, value) = state.desired().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("{key} not desired"));
        let json = std::str::from_utf8(value).unwrap().to_string();
        let at = json.find("\"port\":").expect("a port") + 7;
        json[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().to_string()
    }

    #[test]
    fn initial_load_puts_every_object() {
        let mut state = DirectoryState::new(CLUSTER);
        state.update("d/a.yaml", docs(&[service("a", 80), service("b", 80)]));
        state.update("d/c.yaml", docs(&[service("c", 80)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("a"), &*key("b"), &*key("c")], vec![]));
        assert_eq!(r.reports.len(), 2);
        assert_eq!(r.reports[0].outcome, FileOutcome::Applied { objects: 2 });
        let summary = state.summary();
        assert_eq!((summary.files, summary.objects, summary.files_with_errors), (2, 3, 0));
        // Nothing changed: nothing to do, nothing to report.
        assert_eq!(step(&mut state), Reconciliation::default());
    }

    #[test]
    fn edit_puts_only_the_changed_object() {
        let mut state = loaded(&[("d/a.yaml", docs(&[service("a", 80), service("b", 80)]))]);
        state.update("d/a.yaml", docs(&[service("a", 80), service("b", 81)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("b")], vec![]));
        assert_eq!(port_of(&state, "b"), "81");
    }

    #[test]
    fn unchanged_content_is_not_parsed_or_reported_again() {
        let mut state = loaded(&[("d/a.yaml", docs(&[service("a", 80)]))]);
        state.update("d/a.yaml", docs(&[service("a", 80)]));
        assert_eq!(step(&mut state), Reconciliation::default());
        // Reformatted but equal objects: reported (the file changed), no store change.
        state.update(
            "d/a.yaml",
            FileInput::Content(
                b"# a comment\napiVersion: v1\nkind: Service\nmetadata:\n  namespace: shop\n  name: a\nspec: {ports: [{port: 80}]}\n".to_vec(),
            ),
        );
        let r = step(&mut state);
        assert!(r.ops.is_empty(), "{:?}", r.ops);
        assert_eq!(r.reports.len(), 1);
    }

    #[test]
    fn adding_and_deleting_files() {
        let mut state = loaded(&[("d/a.yaml", docs(&[service("a", 80)]))]);
        state.update("d/b.yaml", docs(&[service("b", 80), service("c", 80)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("b"), &*key("c")], vec![]));

        state.update("d/b.yaml", FileInput::Gone);
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![], vec![&*key("b"), &*key("c")]));
        assert_eq!(r.reports[0].outcome, FileOutcome::Removed { objects: 2 });
        // A file that was never seen going away is not news.
        state.update("d/never.yaml", FileInput::Gone);
        assert_eq!(step(&mut state), Reconciliation::default());
    }

    #[test]
    fn removing_an_object_from_a_file_deletes_only_it() {
        let mut state = loaded(&[("d/a.yaml", docs(&[service("a", 80), service("b", 80)]))]);
        state.update("d/a.yaml", docs(&[service("b", 80)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![], vec![&*key("a")]));
    }

    #[test]
    fn a_bad_edit_keeps_the_whole_file_and_a_fix_applies_it() {
        let mut state = loaded(&[("d/a.yaml", docs(&[service("a", 80), service("b", 80)]))]);
        // b is invalid (port 0) and a changed: nothing of the file changes.
        state.update("d/a.yaml", docs(&[service("a", 90), service("b", 0)]));
        let r = step(&mut state);
        assert!(r.ops.is_empty(), "{:?}", r.ops);
        assert_eq!(r.reports[0].outcome, FileOutcome::KeptLastGood { objects: 2 });
        let error =
            r.reports[0].diagnostics.iter().find(|d| d.severity == Severity::Error).expect("an error").to_string();
        assert!(
            error.contains("d/a.yaml")
                && error.contains("document 2")
                && error.contains("Service shop/b")
                && error.contains("spec.ports[0].port"),
            "{error}"
        );
        assert_eq!(port_of(&state, "a"), "80");
        let summary = state.summary();
        assert_eq!((summary.files_with_errors, summary.objects), (1, 2));
        assert_eq!(summary.file_summaries[0].state, FileState::KeepingLastGood);
        assert_eq!(summary.diagnostics.len(), 1);

        // A syntax error: same.
        state.update("d/a.yaml", FileInput::Content(b"apiVersion: v1\nkind: [\n".to_vec()));
        let r = step(&mut state);
        assert!(r.ops.is_empty(), "{:?}", r.ops);
        assert!(r.reports[0].diagnostics[0].to_string().contains("invalid YAML"));

        // Fixed: the new content applies as a whole.
        state.update("d/a.yaml", docs(&[service("a", 90), service("b", 81)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("a"), &*key("b")], vec![]));
        assert_eq!(r.reports[0].outcome, FileOutcome::Applied { objects: 2 });
        assert_eq!(state.summary().files_with_errors, 0);
        assert!(state.summary().diagnostics.is_empty());
    }

    #[test]
    fn a_new_file_with_errors_serves_nothing_until_fixed() {
        let mut state = loaded(&[]);
        state.update("d/a.yaml", docs(&[service("a", 80), service("b", 0)]));
        let r = step(&mut state);
        assert!(r.ops.is_empty(), "{:?}", r.ops);
        assert_eq!(r.reports[0].outcome, FileOutcome::NotApplied);
        assert_eq!(state.summary().file_summaries[0].state, FileState::NotApplied);
        state.update("d/a.yaml", docs(&[service("a", 80), service("b", 80)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("a"), &*key("b")], vec![]));
    }

    #[test]
    fn deleting_a_bad_file_withdraws_its_last_good_objects() {
        let mut state = loaded(&[("d/a.yaml", docs(&[service("a", 80)]))]);
        state.update("d/a.yaml", FileInput::Content(b"{".to_vec()));
        assert!(step(&mut state).ops.is_empty());
        state.update("d/a.yaml", FileInput::Gone);
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![], vec![&*key("a")]));
        assert_eq!(state.summary().files, 0);
    }

    #[test]
    fn unreadable_and_non_utf8_files_are_errors_that_keep_the_last_good_content() {
        let mut state = loaded(&[("d/a.yaml", docs(&[service("a", 80)]))]);
        state.update("d/a.yaml", FileInput::Unreadable("permission denied".into()));
        let r = step(&mut state);
        assert!(r.ops.is_empty());
        assert!(r.reports[0].diagnostics[0].to_string().contains("permission denied"));
        state.update("d/a.yaml", FileInput::Content(vec![b'a', 0xff, b'\n']));
        let r = step(&mut state);
        assert!(r.ops.is_empty());
        assert!(r.reports[0].diagnostics[0].to_string().contains("not UTF-8"));
        assert_eq!(port_of(&state, "a"), "80");
    }

    #[test]
    fn warnings_do_not_block_and_are_reported_once_per_change() {
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [r]\n  http:\n  - fault: {abort: {httpStatus: 418}}\n    route: [{destination: {host: r}}]\n";
        let mut state = DirectoryState::new(CLUSTER);
        state.update("d/vs.yaml", FileInput::Content(vs.as_bytes().to_vec()));
        let r = step(&mut state);
        assert_eq!(r.ops.len(), 1);
        assert_eq!(r.reports.len(), 1);
        assert!(r.reports[0].diagnostics.iter().any(|d| d.severity == Severity::Warning));
        assert_eq!(state.summary().files_with_errors, 0);
        state.update("d/vs.yaml", FileInput::Content(vs.as_bytes().to_vec()));
        assert!(step(&mut state).reports.is_empty());
    }

    #[test]
    fn renaming_a_file_changes_nothing_in_the_store() {
        let mut state = loaded(&[("d/a.yaml", docs(&[service("a", 80), service("b", 80)]))]);
        state.update("d/a.yaml", FileInput::Gone);
        state.update("d/sub/renamed.yml", docs(&[service("a", 80), service("b", 80)]));
        let r = step(&mut state);
        assert!(r.ops.is_empty(), "{:?}", r.ops);
        assert_eq!(state.summary().objects, 2);
    }

    #[test]
    fn moving_an_object_between_files_changes_nothing_in_the_store() {
        let mut state = loaded(&[
            ("d/a.yaml", docs(&[service("a", 80), service("b", 80)])),
            ("d/b.yaml", docs(&[service("c", 80)])),
        ]);
        state.update("d/a.yaml", docs(&[service("a", 80)]));
        state.update("d/b.yaml", docs(&[service("b", 80), service("c", 80)]));
        let r = step(&mut state);
        assert!(r.ops.is_empty(), "{:?}", r.ops);
        assert!(r.new_conflicts.is_empty());
    }

    #[test]
    fn conflicts_serve_the_first_definition_in_path_order_and_name_both_places() {
        let mut state = DirectoryState::new(CLUSTER);
        state.update("d/b.yaml", docs(&[service("x", 82)]));
        state.update("d/a.yaml", docs(&[service("y", 80), service("x", 81)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("x"), &*key("y")], vec![]));
        assert_eq!(port_of(&state, "x"), "81", "d/a.yaml comes first");
        assert_eq!(r.new_conflicts.len(), 1);
        let text = r.new_conflicts[0].to_string();
        assert!(
            text.contains("d/b.yaml: document 1")
                && text.contains("Service shop/x")
                && text.contains("d/a.yaml document 2"),
            "{text}"
        );
        let summary = state.summary();
        assert_eq!((summary.conflicts, summary.objects), (1, 2));
        assert!(summary.diagnostics.contains(&r.new_conflicts[0]));

        // Reported once.
        state.update("d/b.yaml", docs(&[service("x", 83)]));
        let r = step(&mut state);
        assert!(r.new_conflicts.is_empty() && r.ops.is_empty(), "{r:?}");

        // The winner withdraws its definition: the other one takes over.
        state.update("d/a.yaml", docs(&[service("y", 80)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("x")], vec![]));
        assert_eq!(port_of(&state, "x"), "83");
        assert_eq!(r.resolved_conflicts.len(), 1);
        assert_eq!(state.summary().conflicts, 0);
    }

    #[test]
    fn a_duplicate_within_one_file_keeps_the_first_document() {
        let mut state = DirectoryState::new(CLUSTER);
        state.update("d/a.yaml", docs(&[service("x", 80), service("x", 81)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("x")], vec![]));
        assert_eq!(port_of(&state, "x"), "80");
        let text = r.new_conflicts[0].to_string();
        assert!(text.contains("d/a.yaml: document 2") && text.contains("d/a.yaml document 1"), "{text}");
    }

    #[test]
    fn startup_deletes_stale_keys_and_rewrites_only_changed_ones() {
        let mut state = DirectoryState::new(CLUSTER);
        let mut fresh = DirectoryState::new(CLUSTER);
        fresh.update("d/a.yaml", docs(&[service("a", 80)]));
        fresh.reconcile();
        let (_, a_json) = fresh.desired().next().unwrap();
        state.load_store([
            (key("a"), a_json.clone()),
            (key("b"), Bytes::from_static(b"{}")),
            (key("stale"), Bytes::from_static(b"{}")),
            ("/meshplane/v1/clusters/other/services/shop/z".into(), Bytes::from_static(b"{}")),
        ]);
        state.update("d/a.yaml", docs(&[service("a", 80), service("b", 80)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("b")], vec![&*key("stale")]));
        assert_eq!(r.released_held, 1);
    }

    #[test]
    fn startup_with_a_broken_file_holds_unaccounted_store_keys_until_it_is_fixed() {
        let mut state = DirectoryState::new(CLUSTER);
        state.load_store([(key("a"), Bytes::from_static(b"{}")), (key("b"), Bytes::from_static(b"{}"))]);
        state.update("d/good.yaml", docs(&[service("a", 80)]));
        state.update("d/broken.yaml", FileInput::Content(b"{".to_vec()));
        let r = step(&mut state);
        // a is rewritten from its file; b may be broken.yaml's: kept as is.
        assert_eq!(summarize(&r.ops), (vec![&*key("a")], vec![]));
        assert_eq!(state.summary().held_from_store, 1);
        assert_eq!(state.summary().objects, 2);

        // A held key a file defines is the file's from then on.
        state.update("d/good.yaml", docs(&[service("a", 80), service("b", 80)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![&*key("b")], vec![]));
        assert_eq!(state.summary().held_from_store, 0);
        state.update("d/good.yaml", docs(&[service("a", 80)]));
        let r = step(&mut state);
        assert_eq!(summarize(&r.ops), (vec![], vec![&*key("b")]));
    }

    #[test]
    fn held_keys_are_deleted_once_the_broken_file_parses_or_goes() {
        for fix in [FileInput::Gone, docs(&[service("c", 80)])] {
            let mut state = DirectoryState::new(CLUSTER);
            state.load_store([(key("b"), Bytes::from_static(b"{}"))]);
            state.update("d/broken.yaml", FileInput::Content(b"{".to_vec()));
            assert!(step(&mut state).ops.is_empty());
            state.update("d/broken.yaml", fix.clone());
            let r = step(&mut state);
            let (_, deletes) = summarize(&r.ops);
            assert_eq!(deletes, vec![&*key("b")], "{fix:?}");
            assert_eq!(r.released_held, 1);
            // Released for good: a later broken file does not bring it back.
            state.update("d/broken2.yaml", FileInput::Content(b"{".to_vec()));
            assert!(step(&mut state).ops.is_empty());
        }
    }

    #[test]
    fn failed_batches_are_planned_again() {
        let mut state = DirectoryState::new(CLUSTER);
        state.update("d/a.yaml", docs(&[service("a", 80)]));
        let first = state.reconcile();
        assert_eq!(first.ops.len(), 1);
        // Not applied (the store failed): the next pass plans the same put,
        // plus any newer change.
        state.update("d/b.yaml", docs(&[service("b", 80)]));
        let again = state.reconcile();
        assert_eq!(summarize(&again.ops), (vec![&*key("a"), &*key("b")], vec![]));
        state.applied(&again.ops);
        assert!(state.reconcile().ops.is_empty());
    }
}
