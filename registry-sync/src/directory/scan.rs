//! [`Scanner`]: find the configuration files below a directory and read the
//! ones that may have changed.
//!
//! ```text
//!  walk(root) ─▶ *.yaml|*.yml (no hidden, no editor temp files) ─▶ metadata (len, mtime)
//!      │                                                               │
//!      │         same len and mtime as last scan, nothing to reread? ──┼── yes ─▶ skip
//!      │                                   │ no                        │
//!      │                   modified within the settle time? ───────────┴── yes ─▶ later
//!      ▼                                   │ no
//!  known files not found ─▶ Gone      fs::read ─▶ Content | Unreadable
//! ```
//!
//! An mtime is trusted only once it is [`RACY_WINDOW`] older than the scan
//! that recorded it: a file written twice within one timestamp tick, with the
//! same length, would otherwise look unchanged. Re-reading a recent file costs
//! a read and a hash in [`DirectoryState`](super::DirectoryState), not a parse.
//!
//! A file modified less than the settle time ago (the debounce quiet period
//! in the directory source) is left for a later scan, so a tool that
//! truncates and rewrites a file in place is not caught in between and its
//! objects withdrawn for a moment.
//!
//! Symbolic links are followed (Kubernetes ConfigMap volumes are made of
//! them), directories at most once each, so link cycles end. A directory that
//! cannot be listed is reported and the files known below it are kept as they
//! were, rather than withdrawn.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::state::FileInput;

/// How recent an mtime must be for the file to be read again regardless.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Whether a file or directory name is skipped: hidden (`.git`, `.#x.yaml`,
/// Kubernetes' `..data`), or an editor's backup or swap file.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.starts_with('#')
}

/// Whether a (non-ignored) file name is a configuration file.
pub fn is_config_file(name: &str) -> bool {
    if is_ignored_name(name) {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    (lower.ends_with(".yaml") && lower.len() > 5) || (lower.ends_with(".yml") && lower.len() > 4)
}

/// The configuration directory could not be scanned at all.
#[derive(Debug, thiserror::Error)]
#[error(
    "configuration directory {} cannot be read: {reason}; check that it exists, is a directory and is readable (--config-dir)",
    path.display()
)]
pub struct ScanError {
    pub path: PathBuf,
    pub reason: String,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Files that are new, may have changed, or are gone, in path order.
    pub changes: Vec<(PathBuf, FileInput)>,
    /// Directories that could not be listed, and why; files known below them
    /// are kept unchanged.
    pub unlisted_dirs: Vec<(PathBuf, String)>,
    /// Configuration files found.
    pub files: usize,
    /// Some files were modified within the settle time and were left for a
    /// later scan: rescan soon.
    pub settling: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    /// Read the file again next time: its mtime was too recent to trust
    /// when recorded, or it could not be read.
    reread: bool,
}

/// Remembers each file's fingerprint between scans. Blocking: run it on a
/// blocking thread.
#[derive(Debug)]
pub struct Scanner {
    root: PathBuf,
    settle: Duration,
    known: BTreeMap<PathBuf, Fingerprint>,
}

impl Scanner {
    pub fn new(root: impl Into<PathBuf>) -> Scanner {
        Scanner { root: root.into(), settle: Duration::ZERO, known: BTreeMap::new() }
    }

    /// Leave files modified less than `settle` ago for a later scan, so a
    /// file caught between an in-place truncate and write is not read empty.
    pub fn with_settle(mut self, settle: Duration) -> Scanner {
        self.settle = settle;
        self
    }

    /// Change the settle time (see [`with_settle`](Self::with_settle)).
    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Walk the directory; read files that are new or may have changed.
    pub fn scan(&mut self) -> Result<ScanOutcome, ScanError> {
        let root_error = |reason: String| ScanError { path: self.root.clone(), reason };
        match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(root_error("it is not a directory".into())),
            Err(e) => return Err(root_error(e.to_string())),
        }
        let scan_time = SystemTime::now();
        let mut walk = Walk::default();
        walk.dir(&self.root);
        if walk.unlisted.first().is_some_and(|(dir, _)| dir == &self.root) {
            let (_, reason) = walk.unlisted.swap_remove(0);
            return Err(root_error(reason));
        }

        let mut outcome = ScanOutcome { files: walk.found.len(), ..ScanOutcome::default() };
        for (path, found) in walk.found {
            let meta = match found {
                Found::File(meta) => meta,
                Found::Unreadable(reason) => {
                    let retry = Fingerprint { len: 0, modified: None, reread: true };
                    self.known.insert(path.clone(), retry);
                    outcome.changes.push((path, FileInput::Unreadable(reason)));
                    continue;
                }
            };
            let modified = meta.modified().ok();
            let fingerprint = Fingerprint {
                len: meta.len(),
                modified,
                reread: modified.is_none_or(|m| m + RACY_WINDOW >= scan_time || m > scan_time),
            };
            let unchanged = self
                .known
                .get(&path)
                .is_some_and(|old| !old.reread && old.len == fingerprint.len && old.modified == fingerprint.modified);
            if unchanged {
                // Keep the fingerprint but let a racy one settle.
                self.known.insert(path, fingerprint);
                continue;
            }
            let too_fresh = modified
                .is_some_and(|m| m <= scan_time && scan_time.duration_since(m).is_ok_and(|age| age < self.settle));
            if too_fresh {
                outcome.settling = true;
                continue;
            }
            let mut fingerprint = fingerprint;
            let input = match fs::read(&path) {
                Ok(bytes) => FileInput::Content(bytes),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Removed between listing and reading.
                    outcome.files -= 1;
                    if self.known.remove(&path).is_some() {
                        outcome.changes.push((path, FileInput::Gone));
                    }
                    continue;
                }
                Err(e) => {
                    // Permissions can be fixed without touching the mtime.
                    fingerprint.reread = true;
                    FileInput::Unreadable(e.to_string())
                }
            };
            self.known.insert(path.clone(), fingerprint);
            outcome.changes.push((path, input));
        }

        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|path| !walk.seen.contains(*path))
            .filter(|path| !walk.unlisted.iter().any(|(dir, _)| path.starts_with(dir)))
            .cloned()
            .collect();
        for path in gone {
            self.known.remove(&path);
            outcome.changes.push((path, FileInput::Gone));
        }
        outcome.changes.sort_by(|a, b| a.0.cmp(&b.0));
        outcome.unlisted_dirs = walk.unlisted;
        Ok(outcome)
    }
}

enum Found {
    File(fs::Metadata),
    Unreadable(String),
}

#[derive(Default)]
struct Walk {
    found: BTreeMap<PathBuf, Found>,
    /// Every configuration file path listed (found or unreadable).
    seen: BTreeSet<PathBuf>,
    /// Canonical paths of directories walked, so link cycles end.
    visited: BTreeSet<PathBuf>,
    unlisted: Vec<(PathBuf, String)>,
}

impl Walk {
    fn dir(&mut self, dir: &Path) {
        if let Ok(canonical) = fs::canonicalize(dir)
            && !self.visited.insert(canonical)
        {
            return;
        }
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.unlisted.push((dir.to_path_buf(), e.to_string()));
                return;
            }
        };
        let mut subdirs = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.unlisted.push((dir.to_path_buf(), e.to_string()));
                    return;
                }
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_ignored_name(name) {
                continue;
            }
            let path = entry.path();
            // Follows symbolic links.
            match fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => subdirs.push(path),
                Ok(meta) if meta.is_file() && is_config_file(name) => {
                    self.seen.insert(path.clone());
                    self.found.insert(path, Found::File(meta));
                }
                Ok(_) => {}
                // A dangling link, or removed since listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if is_config_file(name) => {
                    self.seen.insert(path.clone());
                    self.found.insert(path, Found::Unreadable(e.to_string()));
                }
                Err(e) => self.unlisted.push((path, e.to_string())),
            }
        }
        for subdir in subdirs {
            self.dir(&subdir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(outcome: &ScanOutcome) -> Vec<(String, String)> {
        outcome
            .changes
            .iter()
            .map(|(path, input)| {
                let what = match input {
                    FileInput::Content(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    FileInput::Unreadable(_) => "unreadable".into(),
                    FileInput::Gone => "gone".into(),
                };
                (path.file_name().unwrap().to_string_lossy().into_owned(), what)
            })
            .collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    /// Make every known fingerprint trusted, as if the files were old.
    fn settle(scanner: &mut Scanner) {
        for f in scanner.known.values_mut() {
            f.reread = false;
        }
    }

    #[test]
    fn names() {
        for name in ["a.yaml", "b.yml", "C.YAML", "x.y.yaml"] {
            assert!(is_config_file(name), "{name}");
        }
        for name in
            [".a.yaml", ".#a.yaml", "a.yaml~", "a.yaml.swp", "#a.yaml#", "a.json", "a.yaml.tmp", ".yaml", "4913"]
        {
            assert!(!is_config_file(name), "{name}");
        }
    }

    #[test]
    fn finds_config_files_recursively_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::create_dir_all(root.join(".git")).unwrap();
        fs::write(root.join("a.yaml"), "a").unwrap();
        fs::write(root.join("sub/b.yml"), "b").unwrap();
        fs::write(root.join("sub/deeper/c.yaml"), "c").unwrap();
        fs::write(root.join(".git/d.yaml"), "d").unwrap();
        fs::write(root.join("a.yaml~"), "e").unwrap();
        fs::write(root.join(".a.yaml.swp"), "f").unwrap();
        fs::write(root.join("notes.txt"), "g").unwrap();

        let mut scanner = Scanner::new(root);
        let outcome = scanner.scan().unwrap();
        assert_eq!(content(&outcome), pairs(&[("a.yaml", "a"), ("b.yml", "b"), ("c.yaml", "c")]));
        assert_eq!(outcome.files, 3);
    }

    #[test]
    fn reads_only_changed_files_and_reports_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("a.yaml"), "a").unwrap();
        fs::write(root.join("b.yaml"), "b").unwrap();
        let mut scanner = Scanner::new(root);
        assert_eq!(scanner.scan().unwrap().changes.len(), 2);

        // Just written: racy, so read again (the core's hash check makes that cheap).
        assert_eq!(scanner.scan().unwrap().changes.len(), 2);
        settle(&mut scanner);
        assert!(scanner.scan().unwrap().changes.is_empty());

        fs::write(root.join("b.yaml"), "bb").unwrap();
        fs::write(root.join("c.yaml"), "c").unwrap();
        fs::remove_file(root.join("a.yaml")).unwrap();
        let outcome = scanner.scan().unwrap();
        assert_eq!(content(&outcome), pairs(&[("a.yaml", "gone"), ("b.yaml", "bb"), ("c.yaml", "c")]));
        assert_eq!(outcome.files, 2);
    }

    #[test]
    fn a_same_length_rewrite_with_an_old_mtime_is_not_reread_but_a_recent_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let path = root.join("a.yaml");
        fs::write(&path, "a").unwrap();
        let mut scanner = Scanner::new(root);
        scanner.scan().unwrap();
        // Same length, mtime changed: read.
        fs::write(&path, "b").unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(60)).unwrap();
        let outcome = scanner.scan().unwrap();
        assert_eq!(content(&outcome), pairs(&[("a.yaml", "b")]));
        // Old mtime, so trusted: not read again.
        assert!(scanner.scan().unwrap().changes.is_empty());
    }

    #[test]
    fn files_modified_within_the_settle_time_are_left_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let path = root.join("a.yaml");
        fs::write(&path, "a").unwrap();
        let mut scanner = Scanner::new(root).with_settle(Duration::from_secs(3600));
        let outcome = scanner.scan().unwrap();
        assert!(outcome.changes.is_empty() && outcome.settling);
        // Once settled, it is read.
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(7200)).unwrap();
        let outcome = scanner.scan().unwrap();
        assert_eq!(content(&outcome), pairs(&[("a.yaml", "a")]));
        assert!(!outcome.settling);
    }

    #[test]
    fn missing_root_is_an_error_naming_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut scanner = Scanner::new(dir.path().join("nope"));
        let err = scanner.scan().unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("--config-dir"), "{err}");
        let file = dir.path().join("f.yaml");
        fs::write(&file, "x").unwrap();
        let err = Scanner::new(&file).scan().unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn follows_symlinks_and_survives_link_cycles() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A ConfigMap volume: files are links into a hidden, swapped directory.
        fs::create_dir_all(root.join("..2024_01")).unwrap();
        fs::write(root.join("..2024_01/a.yaml"), "a").unwrap();
        symlink("..2024_01", root.join("..data")).unwrap();
        symlink("..data/a.yaml", root.join("a.yaml")).unwrap();
        symlink(".", root.join("loop")).unwrap();
        symlink("missing.yaml", root.join("dangling.yaml")).unwrap();
        let mut scanner = Scanner::new(root);
        let outcome = scanner.scan().unwrap();
        assert_eq!(content(&outcome), pairs(&[("a.yaml", "a")]));
    }

    #[cfg(unix)]
    #[test]
    fn an_unlistable_subdirectory_keeps_its_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let sub = root.join("sub");
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("a.yaml"), "a").unwrap();
        let mut scanner = Scanner::new(root);
        assert_eq!(scanner.scan().unwrap().changes.len(), 1);
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o000)).unwrap();
        let listable = fs::read_dir(&sub).is_ok(); // root ignores permissions
        let outcome = scanner.scan().unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        if !listable {
            assert!(outcome.changes.iter().all(|(_, i)| *i != FileInput::Gone), "{:?}", outcome.changes);
            assert_eq!(outcome.unlisted_dirs.len(), 1);
        }
    }
}
