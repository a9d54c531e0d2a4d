//! Resource names and versions interned to `u32` symbols, shared by every
//! simulated proxy of a process.
//!
//! Ten thousand proxies hold mostly the same few thousand names and versions;
//! interning keeps a proxy's state at 8 bytes per resource it holds.
//! Interned strings are never freed: memory grows with the number of distinct
//! names and versions seen (i.e. with config churn), not with proxies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An interned string. `0` is the empty string.
pub type Sym = u32;

/// The symbol of the empty string.
pub const EMPTY: Sym = 0;

#[derive(Debug)]
pub struct Interner {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    ids: HashMap<Arc<str>, Sym>,
    strings: Vec<Arc<str>>,
}

impl Default for Interner {
    fn default() -> Self {
        let empty: Arc<str> = Arc::from("");
        Interner { inner: Mutex::new(Inner { ids: HashMap::from([(empty.clone(), EMPTY)]), strings: vec![empty] }) }
    }
}

impl Interner {
    pub fn intern(&self, s: &str) -> Sym {
        let mut inner = self.inner.lock().expect("interner poisoned");
        if let Some(&id) = inner.ids.get(s) {
            return id;
        }
        let id = Sym::try_from(inner.strings.len()).expect("more than 2^32 distinct names");
        let s: Arc<str> = Arc::from(s);
        inner.strings.push(s.clone());
        inner.ids.insert(s, id);
        id
    }

    /// The symbol of `s` if it was ever interned.
    pub fn lookup(&self, s: &str) -> Option<Sym> {
        self.inner.lock().expect("interner poisoned").ids.get(s).copied()
    }

    pub fn resolve(&self, id: Sym) -> Arc<str> {
        self.inner.lock().expect("interner poisoned").strings[id as usize].clone()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("interner poisoned").strings.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_once_and_resolves() {
        let i = Interner::default();
        let a = i.intern("outbound|80||a.ns.svc.cluster.local");
        assert_eq!(i.intern("outbound|80||a.ns.svc.cluster.local"), a);
        assert_ne!(i.intern("b"), a);
        assert_eq!(&*i.resolve(a), "outbound|80||a.ns.svc.cluster.local");
        assert_eq!(i.lookup(""), Some(EMPTY));
        assert_eq!(i.lookup("c"), None);
    }
}
