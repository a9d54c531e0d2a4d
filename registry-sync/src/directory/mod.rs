//! # The directory source: a directory of YAML, kept in the store
//!
//! `meshplane up --config-dir DIR --cluster-id ID` serves the Kubernetes and
//! Istio objects of every `*.yaml` / `*.yml` file below `DIR` as cluster `ID`
//! (default [`DEFAULT_CLUSTER_ID`]), and keeps serving what the files say as
//! they are edited, added, renamed and removed.
//!
//! ```text
//!   DIR ──notify events──▶ Debounce (100 ms quiet) ──┐
//!    │                                               ├─▶ Scanner ─ changed files ─▶ DirectoryState ─ ops ─▶ Store::batch
//!    └──────────── periodic rescan (2 s) ────────────┘   (mtime,len) (path → bytes) (parse, last good,     (one atomic
//!                                                                                    conflicts, diff)       batch/pass)
//!                                                                                         │
//!                                          SourceStatus (ready, counts, diagnostics) ◀────┘
//! ```
//!
//! ## What it owns
//! Every key under `cluster_prefix(ID)`: at startup it lists them and deletes
//! those no file defines (so a restart on a persistent store drops stale
//! objects; see the exception under Restarts below), and afterwards it
//! assumes it is their only writer.
//!
//! ## What it must not know
//! xDS, shards, HTTP: it writes the store and publishes a [`SourceStatus`];
//! `meshplane up` turns that into `/ready` and a debug page. Parsing and key
//! layout belong to `meshplane-model`.
//!
//! ## Rules an operator sees
//! - **A file is applied all or nothing.** A file with any error (YAML syntax,
//!   an invalid object, unreadable, not UTF-8) is reported (each diagnostic
//!   names file, document, object and field) and changes nothing: its last
//!   good content stays served until it parses cleanly. A file that has not
//!   parsed cleanly since startup serves nothing. Warnings never block.
//! - **Conflicts:** an object defined twice (in one file or two) is served
//!   from the first definition in (path, document) order; the others are
//!   reported as errors naming both places.
//! - **Restarts:** store keys no file defines are deleted at startup, except
//!   while some file has errors and has not parsed cleanly since startup:
//!   then they are left as they are (the broken file may define them) until
//!   every file parses cleanly or the broken file is removed.
//! - **Minimal writes:** one atomic batch per pass, with puts only of objects
//!   whose JSON changed and deletes only of objects that disappeared; a
//!   renamed file or an object moved between files in one save writes nothing.
//! - Diagnostics are logged once per change of a file, not on every rescan.
//!
//! ## Change detection
//! `notify` (inotify, FSEvents, ...) wakes the source promptly; events are
//! debounced so an editor's write-temp-then-rename burst is read once. A full
//! rescan runs every 2 s anyway, as a safety net for missed events (network
//! filesystems, watch limits, a directory replaced wholesale; the watch is
//! not re-established if `DIR` itself is deleted and re-created, but the
//! rescan still sees the new content). A file whose last write is younger
//! than the quiet period is left for a later scan, so an in-place rewrite is
//! not read half-written (the first load reads every file at once). A
//! rescan reads only files whose length or mtime changed (or whose mtime is
//! too recent to trust), and [`DirectoryState`] hashes contents (xxh3) so
//! unchanged content is not parsed again. If notifications cannot be set up, the source polls
//! every 250 ms instead.
//!
//! The pure parts ([`DirectoryState`], [`Debounce`]) take their inputs as
//! values and are tested synchronously; [`DirectorySource`] is the async loop
//! around them.

mod debounce;
mod scan;
mod source;
mod state;

pub use debounce::Debounce;
pub use scan::{RACY_WINDOW, ScanError, ScanOutcome, Scanner, is_config_file, is_ignored_name};
pub use source::{
    DEFAULT_CLUSTER_ID, DirectoryConfig, DirectoryError, DirectoryHandle, DirectorySource, SourceStatus, write_batches,
};
pub use state::{DirectoryState, FileInput, FileOutcome, FileReport, FileState, FileSummary, Reconciliation, Summary};
