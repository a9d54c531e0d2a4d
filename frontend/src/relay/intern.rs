//! Resource names and versions as the relay's soft state keeps them.
//!
//! A frontend remembers, for every relayed Delta stream, the name and
//! version of every resource the proxy has ACKed: about 300 per proxy on the
//! standard mesh. As `String`s in a `BTreeMap` that was some 180 bytes per
//! entry (about 55 KB per proxy). Proxies of one namespace hold mostly the
//! same names, and versions are content hashes, so:
//! - names are interned process-wide (one allocation per distinct name,
//!   shared by every stream that holds it);
//! - a version that is 32 lowercase hex digits (meshplane's xxh3-128) is
//!   kept as its `u128`, any other as an interned string.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

/// Interned names below this count are never swept.
const SWEEP_FLOOR: usize = 1024;

struct Interner {
    names: HashSet<Arc<str>>,
    /// The number of names after the last sweep: the next sweep comes when
    /// the set has doubled since.
    swept_at: usize,
}

static NAMES: LazyLock<Mutex<Interner>> = LazyLock::new(|| Mutex::new(Interner { names: HashSet::new(), swept_at: 0 }));

/// The shared allocation of `name`.
pub(crate) fn name(name: &str) -> Arc<str> {
    let mut interner = NAMES.lock().expect("interner lock poisoned");
    if let Some(shared) = interner.names.get(name) {
        return shared.clone();
    }
    if interner.names.len() >= (2 * interner.swept_at).max(SWEEP_FLOOR) {
        // Forget names no stream holds any more (services removed, proxies
        // gone): the set holds the only reference.
        interner.names.retain(|n| Arc::strong_count(n) > 1);
        interner.swept_at = interner.names.len();
    }
    let shared: Arc<str> = Arc::from(name);
    interner.names.insert(shared.clone());
    shared
}

/// A resource version, compactly (24 bytes: two `u64` halves instead of a
/// `u128`, whose alignment would make it 32).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// 32 lowercase hex digits, as meshplane's shards write them.
    Hash(u64, u64),
    Other(Arc<str>),
}

impl Version {
    pub(crate) fn new(version: &str) -> Version {
        // Only lowercase: the hash must print back exactly as it came.
        let hex = version.len() == 32 && version.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let half = |digits: &str| u64::from_str_radix(digits, 16).ok();
        match hex.then(|| half(&version[..16]).zip(half(&version[16..]))).flatten() {
            Some((high, low)) => Version::Hash(high, low),
            None => Version::Other(name(version)),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Hash(high, low) => write!(f, "{high:016x}{low:016x}"),
            Version::Other(text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_exactly() {
        for v in [
            "0123456789abcdef0123456789abcdef",
            "00000000000000000000000000000000",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "1",
            "",
            "v2",
            "0123456789abcdef0123456789abcdeg",
        ] {
            assert_eq!(Version::new(v).to_string(), v);
        }
        assert!(matches!(Version::new("0123456789abcdef0123456789abcdef"), Version::Hash(..)));
        assert_eq!(std::mem::size_of::<Version>(), 24);
        assert!(matches!(Version::new("0123456789ABCDEF0123456789ABCDEF"), Version::Other(_)));
    }

    #[test]
    fn a_name_is_one_allocation_while_anyone_holds_it() {
        let a = name("outbound|80||intern-test.shop.svc.cluster.local");
        let b = name("outbound|80||intern-test.shop.svc.cluster.local");
        assert!(Arc::ptr_eq(&a, &b));
    }
}
