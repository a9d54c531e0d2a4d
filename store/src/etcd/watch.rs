//! Watch streams that outlive etcd connections.
//!
//! ```text
//!   Store::watch(prefix, from) ──▶ Follower { cursor.next = from }
//!        ┌──────────────────────────────────────────────────────────────┐
//!        │ open: etcd Watch(prefix range, start_revision = cursor.next) │◀── backoff ──┐
//!        └──────────────────────────────────────────────────────────────┘              │
//!            │ responses                                                               │
//!            ├─ events ──▶ WatchCursor::absorb ──▶ WatchBatch per revision ──▶ caller  │
//!            │            (drops revisions < next, sorts by key, next = last + 1)      │
//!            ├─ compact_revision ──▶ WatchItem::Compacted, end                         │
//!            └─ stream error / end / cancel ──────────────────────────────────────────┘
//! ```
//!
//! The [`WatchCursor`] is the whole resume logic and is pure: `next` only
//! moves past a revision once that revision's batch is queued for the caller,
//! so re-opening from `next` never skips nor repeats one. This relies on etcd
//! never splitting one revision's events across watch responses, which holds
//! unless a watch asks for fragmentation (this one does not).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};
use futures::StreamExt;

use super::{Shared, convert_kv, key_range};
use crate::etcd::failure::Failure;
use crate::{Event, Revision, StoreError, WatchBatch, WatchItem, WatchStream};

/// Where a watch is: the next revision it must deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WatchCursor {
    next: Revision,
}

impl WatchCursor {
    pub(crate) fn new(from: Revision) -> Self {
        WatchCursor { next: from }
    }

    /// The revision an etcd watch must start at to continue exactly here.
    pub(crate) fn next(&self) -> Revision {
        self.next
    }

    /// The batches of one etcd watch response: its events (in revision
    /// order, as etcd sends them) grouped by revision and sorted by key,
    /// without revisions already delivered.
    pub(crate) fn absorb(&mut self, events: impl IntoIterator<Item = Event>) -> Vec<WatchBatch> {
        let mut batches: Vec<WatchBatch> = Vec::new();
        for event in events {
            let revision = event.revision();
            if revision < self.next {
                continue;
            }
            match batches.last_mut() {
                Some(batch) if batch.revision == revision => batch.events.push(event),
                _ => batches.push(WatchBatch { revision, events: vec![event] }),
            }
        }
        for batch in &mut batches {
            batch.events.sort_by(|a, b| a.key().cmp(b.key()));
        }
        if let Some(last) = batches.last() {
            self.next = last.revision + 1;
        }
        batches
    }
}

/// Delays between attempts to re-open a watch: doubling from `initial` up to `max`.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), current: initial }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// One watch stream's state across etcd connections.
struct Follower {
    shared: Arc<Shared>,
    prefix: String,
    cursor: WatchCursor,
    stream: Option<etcd_client::WatchStream>,
    pending: VecDeque<WatchBatch>,
    backoff: Backoff,
    /// Consecutive failed attempts, for logging.
    failures: u32,
    done: bool,
}

/// What one step of the follower produced.
enum Step {
    Continue,
    Compacted(Revision),
    /// The connection or stream failed; re-open after a backoff.
    Lost(String),
    /// Retrying cannot help: report and end.
    Fatal(StoreError),
}

pub(super) fn follow(shared: Arc<Shared>, prefix: &str, from: Revision) -> WatchStream {
    let backoff = Backoff::new(shared.options.watch_retry_initial, shared.options.watch_retry_max);
    let follower = Follower {
        shared,
        prefix: prefix.to_owned(),
        cursor: WatchCursor::new(from),
        stream: None,
        pending: VecDeque::new(),
        backoff,
        failures: 0,
        done: false,
    };
    futures::stream::unfold(follower, |mut follower| async move {
        let item = follower.next_item().await?;
        Some((item, follower))
    })
    .boxed()
}

impl Follower {
    async fn next_item(&mut self) -> Option<Result<WatchItem, StoreError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(WatchItem::Batch(batch)));
            }
            let step = match self.stream.as_mut() {
                None => self.open().await,
                Some(stream) => match stream.message().await {
                    Ok(Some(response)) => self.absorb(response),
                    Ok(None) => Step::Lost("etcd closed the watch stream".to_owned()),
                    Err(error) => Step::Lost(Failure::classify(&error).to_string()),
                },
            };
            match step {
                Step::Continue => {}
                Step::Compacted(compact_revision) => {
                    self.done = true;
                    self.stream = None;
                    return Some(Ok(WatchItem::Compacted { compact_revision }));
                }
                Step::Fatal(error) => {
                    self.done = true;
                    self.stream = None;
                    return Some(Err(error));
                }
                Step::Lost(reason) => {
                    self.stream = None;
                    self.failures += 1;
                    let delay = self.backoff.next_delay();
                    let endpoints = &self.shared.endpoint_list;
                    if self.failures == 1 || self.failures.is_multiple_of(10) {
                        tracing::warn!(
                            prefix = %self.prefix,
                            resume_from = self.cursor.next(),
                            attempts = self.failures,
                            "etcd watch interrupted ({reason}); re-opening from revision {} in {delay:?}; \
                             check that etcd at {endpoints} is running and reachable",
                            self.cursor.next()
                        );
                    } else {
                        tracing::debug!(prefix = %self.prefix, attempts = self.failures, %reason, "etcd watch still interrupted");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Start an etcd watch at the cursor.
    async fn open(&mut self) -> Step {
        let next = self.cursor.next();
        if next < 1 {
            // Below the first revision: below any compaction point. etcd reads
            // a start revision of 0 as "now", so answer without asking it to watch.
            return match self.shared.compaction_point().await {
                Ok(point) => Step::Compacted(point),
                Err(failure) if failure.is_transient() => Step::Lost(failure.to_string()),
                Err(failure) => Step::Fatal(failure.into_store_error("a watch", &self.shared.endpoint_list)),
            };
        }
        // Start one revision early: etcd drops deletions made at its
        // compaction revision, so only a start above it is exact. The extra
        // revision's events are dropped by the cursor, and a compacted start
        // is reported as etcd's compaction revision + 1, the store's
        // compaction point. (Revision 1, the empty store, has no events.)
        let start = (next - 1).max(1);
        let (key, range_end) = key_range(&self.prefix);
        let options = WatchOptions::new().with_range(range_end).with_start_revision(start);
        let mut client = self.shared.watch.clone();
        let opened = tokio::time::timeout(self.shared.options.request_timeout, client.watch(key, Some(options))).await;
        match opened {
            Err(_) => Step::Lost(format!("no answer within {:?}", self.shared.options.request_timeout)),
            Ok(Ok(stream)) => {
                self.stream = Some(stream);
                Step::Continue
            }
            Ok(Err(error)) => match Failure::classify(&error) {
                failure if failure.is_transient() => Step::Lost(failure.to_string()),
                failure => Step::Fatal(
                    failure.into_store_error(&format!("a watch of {:?}", self.prefix), &self.shared.endpoint_list),
                ),
            },
        }
    }

    fn absorb(&mut self, response: WatchResponse) -> Step {
        if self.failures > 0 {
            tracing::info!(
                prefix = %self.prefix,
                attempts = self.failures,
                "etcd watch re-established from revision {}",
                self.cursor.next()
            );
        }
        self.failures = 0;
        self.backoff.reset();
        if response.compact_revision() > 0 {
            return Step::Compacted(response.compact_revision() + 1);
        }
        if response.canceled() {
            return Step::Lost(format!("etcd canceled the watch: {:?}", response.cancel_reason()));
        }
        let events = response.events().iter().filter_map(|event| {
            let kv = event.kv()?;
            match event.event_type() {
                EventType::Put => convert_kv(kv).map(Event::Put),
                EventType::Delete => {
                    let key = super::convert_key(kv.key())?;
                    Some(Event::Delete { key, revision: kv.mod_revision() })
                }
            }
        });
        let batches = self.cursor.absorb(events);
        self.pending.extend(batches);
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::KeyValue;

    fn put(key: &str, revision: Revision) -> Event {
        Event::Put(KeyValue {
            key: key.to_owned(),
            value: Bytes::from_static(b"v"),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        })
    }

    fn delete(key: &str, revision: Revision) -> Event {
        Event::Delete { key: key.to_owned(), revision }
    }

    fn summary(batches: &[WatchBatch]) -> Vec<(Revision, Vec<String>)> {
        batches.iter().map(|b| (b.revision, b.events.iter().map(|e| e.key().to_owned()).collect())).collect()
    }

    #[test]
    fn events_are_grouped_by_revision_and_sorted_by_key() {
        let mut cursor = WatchCursor::new(5);
        let batches = cursor.absorb([put("/b", 5), delete("/a", 5), put("/c", 7), put("/a", 8), delete("/b", 8)]);
        assert_eq!(
            summary(&batches),
            [(5, vec!["/a".into(), "/b".into()]), (7, vec!["/c".into()]), (8, vec!["/a".into(), "/b".into()])]
        );
        assert_eq!(cursor.next(), 9, "the next revision follows the last delivered");
    }

    #[test]
    fn revisions_already_delivered_are_dropped() {
        let mut cursor = WatchCursor::new(1);
        cursor.absorb([put("/a", 3), put("/b", 4)]);
        assert_eq!(cursor.next(), 5);
        let again = cursor.absorb([put("/b", 4), put("/c", 5)]);
        assert_eq!(summary(&again), [(5, vec!["/c".to_owned()])], "a replayed revision 4 is not repeated");
        assert_eq!(cursor.next(), 6);
    }

    #[test]
    fn a_response_without_new_events_leaves_the_cursor() {
        let mut cursor = WatchCursor::new(10);
        assert!(cursor.absorb([]).is_empty());
        assert!(cursor.absorb([put("/old", 9)]).is_empty());
        assert_eq!(cursor.next(), 10, "resuming starts where nothing was delivered yet");
    }

    #[test]
    fn resuming_across_responses_neither_skips_nor_repeats() {
        // The same history, delivered whole or cut at any revision boundary
        // (etcd never splits a revision across responses) with the tail
        // replayed as a re-opened watch would, gives one batch per revision,
        // each once.
        let history = [put("/a", 2), put("/b", 3), delete("/a", 3), put("/c", 4), put("/d", 6)];
        let mut whole = WatchCursor::new(2);
        let expected = summary(&whole.absorb(history.clone()));
        let boundaries = (1..history.len()).filter(|&cut| history[cut - 1].revision() != history[cut].revision());
        for cut in boundaries {
            let mut cursor = WatchCursor::new(2);
            let mut delivered = cursor.absorb(history[..cut].iter().cloned());
            // A re-opened etcd watch replays from `next`; a replay from an
            // earlier revision is filtered too.
            let replay_from = cursor.next() - 1;
            let replay = history.iter().filter(|e| e.revision() >= replay_from).cloned();
            delivered.extend(cursor.absorb(replay));
            assert_eq!(summary(&delivered), expected, "cut after {cut} events");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
