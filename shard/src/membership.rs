//! Shard membership: a shard announces itself to the frontends under a
//! lease, and hands its proxies over before it exits.
//!
//! ```text
//!  grant_lease(ttl) ─▶ put /meshplane/v1/shards/{id} = {"id","addr","draining":false} (leased)
//!        ▲                 │
//!        │ lease lost      ▼  every ttl/3: keep_alive  (store errors: retry sooner, keep serving)
//!        └──────────── Registered ──drain──▶ put {.., "draining": true} ─▶ frontends move the proxies
//!                                                 │ keep_alive goes on
//!                                                 ▼ proxies gone, or drain_timeout
//!                                            revoke_lease ─▶ key deleted ─▶ Left
//! ```
//!
//! - A shard serves every proxy that connects; which proxies connect is the
//!   frontends' decision (rendezvous hashing over the registered, non-draining
//!   shards). Register only once the first snapshot is loaded, so a frontend
//!   never sends proxies to a shard that cannot serve them.
//! - A killed shard stops keeping its lease alive; the store deletes the key
//!   when the TTL runs out, and the frontends re-home its proxies (they
//!   already move a failed stream at once; the lease only ends the shard's
//!   membership).
//! - If the lease is lost while the shard lives (the store was unreachable
//!   for longer than the TTL), the shard registers again with a new lease as
//!   soon as the store answers. Store errors never stop the shard.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meshplane_model::key::{ShardRecord, shard_key};
use meshplane_store::{LeaseId, PutOptions, Store, StoreError};
use tokio::sync::watch;

/// Tuning of a [`ShardRegistration`].
#[derive(Clone, Debug)]
pub struct MembershipOptions {
    /// Lease TTL: how long after a crash the frontends still count the shard.
    /// Keep-alives are sent every `ttl / 3`.
    pub ttl: Duration,
    /// Longest a graceful shutdown waits for the proxies to move away.
    pub drain_timeout: Duration,
}

impl Default for MembershipOptions {
    fn default() -> Self {
        MembershipOptions { ttl: Duration::from_secs(5), drain_timeout: Duration::from_secs(30) }
    }
}

/// Where a shard's registration is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Not (or no longer) in the store: starting, or the lease was lost.
    Registering,
    /// In the store under this lease.
    Registered { lease: LeaseId },
    /// Marked draining; frontends move the proxies away.
    Draining { lease: LeaseId },
    /// The key is gone; the shard may exit.
    Left,
}

/// A shard's membership key, kept alive for the life of the process.
pub struct ShardRegistration {
    store: Arc<dyn Store>,
    record: ShardRecord,
    options: MembershipOptions,
    state: watch::Sender<RegistrationState>,
}

impl std::fmt::Debug for ShardRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardRegistration")
            .field("record", &self.record)
            .field("options", &self.options)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

const RETRY_MIN: Duration = Duration::from_millis(100);

impl ShardRegistration {
    /// `record.draining` is ignored: a shard registers as serving.
    pub fn new(store: Arc<dyn Store>, record: ShardRecord, options: MembershipOptions) -> ShardRegistration {
        let record = ShardRecord { draining: false, ..record };
        ShardRegistration { store, record, options, state: watch::channel(RegistrationState::Registering).0 }
    }

    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.subscribe()
    }

    /// Register and stay registered until `drain` completes; then mark the
    /// shard draining, keep the lease alive until `drained` completes (the
    /// proxies have moved) or `drain_timeout` passes, and revoke the lease.
    pub async fn run(self, drain: impl Future<Output = ()>, drained: impl Future<Output = ()>) {
        let mut drain = std::pin::pin!(drain);
        let lease = tokio::select! {
            lease = self.stay_registered() => lease,
            () = &mut drain => self.current_lease(),
        };
        let Some(lease) = lease else {
            tracing::info!(shard = %self.record.id, "shutting down while not registered; nothing to hand over");
            self.state.send_replace(RegistrationState::Left);
            return;
        };
        self.drain(lease, drained).await;
    }

    fn current_lease(&self) -> Option<LeaseId> {
        match *self.state.borrow() {
            RegistrationState::Registered { lease } | RegistrationState::Draining { lease } => Some(lease),
            RegistrationState::Registering | RegistrationState::Left => None,
        }
    }

    /// Register, keep the lease alive, and register again whenever it is
    /// lost. Never returns (ends when dropped).
    async fn stay_registered(&self) -> Option<LeaseId> {
        let mut backoff = RETRY_MIN;
        loop {
            let lease = match self.register(false).await {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::warn!(shard = %self.record.id, error = %e, retry_in = ?backoff,
                        "cannot register in the store; serving anyway and retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.ttl);
                    continue;
                }
            };
            backoff = RETRY_MIN;
            self.state.send_replace(RegistrationState::Registered { lease });
            tracing::info!(shard = %self.record.id, addr = %self.record.addr, %lease, ttl = ?self.options.ttl,
                "registered as a shard");
            self.keep_alive_until_lost(lease).await;
            self.state.send_replace(RegistrationState::Registering);
            tracing::warn!(shard = %self.record.id, %lease,
                "lease lost (the store was unreachable for longer than the TTL?); registering again");
        }
    }

    /// Grant a lease and put the key under it.
    async fn register(&self, draining: bool) -> Result<LeaseId, StoreError> {
        let lease = self.store.grant_lease(self.options.ttl).await?;
        if let Err(e) = self.put(lease, draining).await {
            let _ = self.store.revoke_lease(lease).await;
            return Err(e);
        }
        Ok(lease)
    }

    async fn put(&self, lease: LeaseId, draining: bool) -> Result<(), StoreError> {
        let record = ShardRecord { draining, ..self.record.clone() };
        let options = PutOptions { lease: Some(lease), ..Default::default() };
        self.store.put(&shard_key(&self.record.id), Bytes::from(record.to_json()), options).await?;
        Ok(())
    }

    /// Keep `lease` alive every ttl/3 (sooner after an error); returns once
    /// the store says it is gone.
    async fn keep_alive_until_lost(&self, lease: LeaseId) {
        let interval = self.options.ttl / 3;
        let mut wait = interval;
        loop {
            tokio::time::sleep(wait).await;
            match self.store.keep_alive(lease).await {
                Ok(_) => wait = interval,
                Err(StoreError::LeaseNotFound(_)) => return,
                Err(e) => {
                    tracing::warn!(shard = %self.record.id, %lease, error = %e, "lease keep-alive failed; retrying");
                    wait = (interval / 4).max(RETRY_MIN);
                }
            }
        }
    }

    async fn drain(&self, lease: LeaseId, drained: impl Future<Output = ()>) {
        let id = &self.record.id;
        match self.put(lease, true).await {
            Ok(()) => {
                self.state.send_replace(RegistrationState::Draining { lease });
                tracing::info!(shard = %id, timeout = ?self.options.drain_timeout,
                    "draining: waiting for the frontends to move this shard's proxies");
                tokio::select! {
                    () = drained => tracing::info!(shard = %id, "all proxies moved"),
                    () = tokio::time::sleep(self.options.drain_timeout) => {
                        tracing::warn!(shard = %id, after = ?self.options.drain_timeout,
                            "proxies still connected after the drain timeout; leaving anyway")
                    }
                    () = self.keep_alive_until_lost(lease) => {
                        tracing::warn!(shard = %id, "lease lost while draining; the frontends moved the proxies already")
                    }
                }
            }
            Err(e) => tracing::warn!(shard = %id, error = %e, "cannot mark this shard draining; leaving at once"),
        }
        if let Err(e) = self.store.revoke_lease(lease).await {
            tracing::warn!(shard = %id, %lease, error = %e, "cannot revoke the lease; its key expires with the TTL");
        }
        self.state.send_replace(RegistrationState::Left);
        tracing::info!(shard = %id, "left the shard membership");
    }
}

/// A [`ShardRegistration`] on a thread and Tokio runtime of its own, with
/// its own store client.
///
/// Its keep-alives must not queue behind the proxy streams: on a shard's main
/// runtime, thousands of streams syncing at once (an initial sync, a re-home
/// of a dead shard's proxies) delayed them past the lease TTL on a loaded
/// machine, and every lost lease moved the shard's proxies away and back
/// (bench/shard-kill.sh). A sleeping thread runs as soon as its timer fires,
/// whatever the main runtime's queue.
pub struct IsolatedRegistration {
    state: watch::Receiver<RegistrationState>,
    start: tokio::sync::oneshot::Sender<(DrainSignal, DrainSignal)>,
    done: tokio::sync::oneshot::Receiver<()>,
}

type DrainSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

impl std::fmt::Debug for IsolatedRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsolatedRegistration").field("state", &*self.state.borrow()).finish_non_exhaustive()
    }
}

impl IsolatedRegistration {
    /// Start the thread and make its store client with `connect` (run on the
    /// thread's runtime, which the client's connection then lives on).
    /// Nothing is registered until [`IsolatedRegistration::start`].
    pub async fn spawn<F, Fut, E>(
        connect: F,
        record: ShardRecord,
        options: MembershipOptions,
    ) -> Result<IsolatedRegistration, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Arc<dyn Store>, E>>,
        E: std::fmt::Display,
    {
        let (state_tx, state_rx) = tokio::sync::oneshot::channel();
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<(DrainSignal, DrainSignal)>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the membership runtime: {e}"))?;
        std::thread::Builder::new()
            .name("membership".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let store = match connect().await {
                        Ok(store) => store,
                        Err(e) => {
                            let _ = state_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let registration = ShardRegistration::new(store, record, options);
                    if state_tx.send(Ok(registration.state())).is_err() {
                        return;
                    }
                    // Dropped unstarted: the shard stopped before its first snapshot.
                    let Ok((drain, drained)) = start_rx.await else { return };
                    registration.run(drain, drained).await;
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the membership thread: {e}"))?;
        let state = state_rx.await.map_err(|_| "the membership thread stopped while starting".to_string())??;
        Ok(IsolatedRegistration { state, start: start_tx, done: done_rx })
    }

    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// [`ShardRegistration::run`] on the thread; the returned receiver
    /// resolves once the shard has left the membership.
    pub fn start(
        self,
        drain: impl Future<Output = ()> + Send + 'static,
        drained: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<()> {
        let _ = self.start.send((Box::pin(drain), Box::pin(drained)));
        self.done
    }
}

#[cfg(test)]
mod tests {
    use meshplane_model::key::SHARDS_PREFIX;
    use meshplane_store::EmbeddedStore;
    use tokio::sync::oneshot;

    use super::*;

    fn record() -> ShardRecord {
        ShardRecord { id: "shard-a".into(), addr: "127.0.0.1:15110".into(), draining: false }
    }

    async fn stored(store: &EmbeddedStore) -> Option<ShardRecord> {
        let kv = store.get(&shard_key("shard-a")).await.unwrap()?;
        Some(ShardRecord::from_json(&kv.value).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn registers_keeps_alive_drains_and_leaves() {
        let store = Arc::new(EmbeddedStore::in_memory());
        let registration = ShardRegistration::new(store.clone(), record(), MembershipOptions::default());
        let mut state = registration.state();
        let (drain_tx, drain_rx) = oneshot::channel::<()>();
        let (drained_tx, drained_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(registration.run(
            async move {
                let _ = drain_rx.await;
            },
            async move {
                let _ = drained_rx.await;
            },
        ));

        state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })).await.unwrap();
        assert_eq!(stored(&store).await, Some(record()));
        let kv = store.get(&shard_key("shard-a")).await.unwrap().unwrap();
        assert!(kv.lease.is_some(), "the key is leased");

        // Many TTLs later the key is still there: keep-alives work.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(stored(&store).await, Some(record()));

        drain_tx.send(()).unwrap();
        state.wait_for(|s| matches!(s, RegistrationState::Draining { .. })).await.unwrap();
        assert!(stored(&store).await.unwrap().draining);
        // Still alive while the proxies move, however long that takes (within the drain timeout).
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(stored(&store).await.unwrap().draining);

        drained_tx.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(*state.borrow(), RegistrationState::Left);
        assert_eq!(stored(&store).await, None);
        assert!(store.list(SHARDS_PREFIX, None).await.unwrap().kvs.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_timeout_bounds_the_handover() {
        let store = Arc::new(EmbeddedStore::in_memory());
        let options = MembershipOptions { drain_timeout: Duration::from_secs(3), ..Default::default() };
        let registration = ShardRegistration::new(store.clone(), record(), options);
        let mut state = registration.state();
        let (drain_tx, drain_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(registration.run(
            async move {
                let _ = drain_rx.await;
            },
            std::future::pending(),
        ));
        state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })).await.unwrap();
        drain_tx.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(stored(&store).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_is_replaced() {
        let store = Arc::new(EmbeddedStore::in_memory());
        let registration = ShardRegistration::new(store.clone(), record(), MembershipOptions::default());
        let mut state = registration.state();
        let task = tokio::spawn(registration.run(std::future::pending(), std::future::pending()));
        state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })).await.unwrap();
        let RegistrationState::Registered { lease: first } = *state.borrow_and_update() else { unreachable!() };
        // The store loses the lease (as after a partition longer than the TTL).
        store.revoke_lease(first).await.unwrap();
        assert_eq!(stored(&store).await, None);
        state.wait_for(|s| matches!(s, RegistrationState::Registered { lease } if *lease != first)).await.unwrap();
        assert_eq!(stored(&store).await, Some(record()));
        task.abort();
    }

    /// Block the calling thread (this test's only runtime worker) for longer
    /// than the lease TTL: a registration on that runtime loses its lease, an
    /// isolated one keeps it. Real time: the point is a starved runtime.
    #[tokio::test]
    async fn an_isolated_registration_keeps_its_lease_while_the_main_runtime_is_starved() {
        let options = MembershipOptions { ttl: Duration::from_secs(2), ..Default::default() };
        let starve = || std::thread::sleep(Duration::from_secs(5));

        // On the starved runtime: the lease runs out.
        let store = Arc::new(EmbeddedStore::in_memory());
        let registration = ShardRegistration::new(store.clone(), record(), options.clone());
        let mut state = registration.state();
        let task = tokio::spawn(registration.run(std::future::pending(), std::future::pending()));
        state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })).await.unwrap();
        starve();
        assert_eq!(stored(&store).await, None, "a starved runtime cannot keep the lease");
        task.abort();

        // On its own thread: the lease and the key stay.
        let store = Arc::new(EmbeddedStore::in_memory());
        let for_thread: Arc<dyn Store> = store.clone();
        let isolated =
            IsolatedRegistration::spawn(move || async move { Ok::<_, StoreError>(for_thread) }, record(), options)
                .await
                .unwrap();
        let mut state = isolated.state();
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let done = isolated.start(
            async move {
                let _ = drain_rx.await;
            },
            async {},
        );
        state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })).await.unwrap();
        let registered = state.borrow_and_update().clone();
        starve();
        assert_eq!(stored(&store).await, Some(record()), "the isolated registration kept its key");
        assert_eq!(*state.borrow(), registered, "under the same lease");

        drain_tx.send(()).unwrap();
        done.await.unwrap();
        assert_eq!(stored(&store).await, None, "left the membership");
    }
}
