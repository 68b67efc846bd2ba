//! [`Acks`]: settles the requests taken on one serving channel (ack or reject), coalescing
//! acks into one `multiple` ack wherever the delivery tags allow it.
//!
//! Why: an ack costs the broker nearly as much as a publish. The raw lapin floor of
//! `rpc-bench` ran at 1.39× its own throughput at 64 in flight with its consumer in no-ack mode
//! (BENCHMARKS.md, "Batched acks"); one `multiple` ack for a run of answered requests keeps
//! at-least-once delivery and saves most of that.
//!
//! What keeps it correct:
//! - The broker numbers the deliveries of a channel 1, 2, 3, … (every delivery, those of no-ack
//!   consumers too), and a `multiple` ack naming tag `t` settles every unsettled delivery up to
//!   `t`. So one is sent only over a run of tags every one of which is settled here: requests
//!   by [`Acks::settle`], deliveries that need no frame (no-ack consumers) by [`Acks::skip`].
//! - A tag is named once at most (the broker closes the channel on an unknown tag): a tag sent
//!   on its own is remembered until the run passes it, and a `multiple` ack names the highest
//!   tag of its run not sent before.
//! - Rejects are sent on their own, before any `multiple` ack that covers them.
//! - A request answered while an earlier one still runs waits at most [`HOLD`] for the run to
//!   reach it, then is acked on its own: a slow request holds back no other request's prefetch
//!   slot for long.
//! - Every frame follows the reply it settles: [`Acks::settle`] is called once the reply has
//!   been written on the same channel, whose frames the broker handles in order.
//! - What the caller hands in with a settlement (the server's in-flight guard) is dropped once
//!   the frame that settles it has been written, so a graceful close that waits for in-flight
//!   requests waits for their acks too.
//! - Bounded: at most [`LIMIT`] tags are remembered past the settled run. A tag that never
//!   settles (a delivery lost before it reached the server) would hold the run forever; past
//!   the limit the channel settles one frame per request from then on.
//!
//! A channel shared with a caller (`Rpc::create`) may carry deliveries this crate never sees,
//! so its acks are never coalesced ([`Acks::new`] with `coalesce: false`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::Channel;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long a request answered out of order waits for the requests before it.
pub(crate) const HOLD: Duration = Duration::from_millis(10);

/// How many tags past the settled run are remembered before coalescing stops.
pub(crate) const LIMIT: usize = 16_384;

/// How a request is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Acked: answered, or dropped on purpose.
    Ack,
    /// Rejected without requeue (dead-lettered back to its caller).
    Reject,
}

/// Kept until the frame settling its request is written (the server's in-flight guard).
pub(crate) type Keep = Box<dyn Send>;

/// The settlements of one serving channel; a task of its own ([`Acks::start`]) writes them.
pub(crate) struct Acks {
    channel: Channel,
    state: Mutex<State>,
    wake: Notify,
}

/// One frame to write.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// `basic.ack`, `multiple` or not.
    Ack { tag: u64, multiple: bool },
    /// `basic.reject` without requeue.
    Reject { tag: u64 },
}

/// A tag past the settled run.
enum Entry {
    /// Settled here, its frame not written yet; since when.
    Waiting { how: Settle, since: Instant, keep: Option<Keep> },
    /// Settled on the broker already (sent on its own, or needing no frame).
    Done,
}

/// What the writer does next: frames in order, and what to drop once they are written.
#[derive(Default)]
struct Plan {
    frames: Vec<Frame>,
    kept: Vec<Keep>,
    /// When to look again if nothing else happens (a held tag's [`HOLD`] running out).
    next: Option<Instant>,
}

struct State {
    /// Every tag up to this one is settled on the broker (or was never owed a frame).
    run: u64,
    /// Tags past `run`, when coalescing.
    past: BTreeMap<u64, Entry>,
    /// The tags of `past` still [`Entry::Waiting`] (few: a tag waits [`HOLD`] at most).
    waiting: BTreeSet<u64>,
    /// Settlements in arrival order, when not coalescing.
    single: Vec<(u64, Settle, Option<Keep>)>,
    coalesce: bool,
    /// The channel failed or the link retired: nothing more is written.
    shut: bool,
}

impl State {
    fn new(coalesce: bool) -> Self {
        State { run: 0, past: BTreeMap::new(), waiting: BTreeSet::new(), single: Vec::new(), coalesce, shut: false }
    }

    fn settle(&mut self, tag: u64, how: Settle, keep: Option<Keep>, now: Instant) {
        if !self.coalesce {
            self.single.push((tag, how, keep));
        } else if tag > self.run && !self.past.contains_key(&tag) {
            self.past.insert(tag, Entry::Waiting { how, since: now, keep });
            self.waiting.insert(tag);
        } else {
            // A tag the run has passed cannot be owed a frame; settling it twice would close
            // the channel.
            warn!(tag, "a delivery tag settled twice; ignored");
        }
    }

    fn skip(&mut self, tag: u64) {
        if self.coalesce && tag > self.run && !self.past.contains_key(&tag) {
            self.past.insert(tag, Entry::Done);
        }
    }

    /// The frames to write now: rejects first, then one `multiple` ack over the settled run,
    /// then tags held longer than [`HOLD`] on their own.
    fn plan(&mut self, now: Instant) -> Plan {
        let mut plan = Plan::default();
        if !self.coalesce {
            for (tag, how, keep) in self.single.drain(..) {
                plan.frames.push(match how {
                    Settle::Ack => Frame::Ack { tag, multiple: false },
                    Settle::Reject => Frame::Reject { tag },
                });
                plan.kept.extend(keep);
            }
            return plan;
        }
        // Rejects go out on their own, before an ack that may cover them.
        let rejects: Vec<u64> = self
            .waiting
            .iter()
            .copied()
            .filter(|tag| matches!(self.past.get(tag), Some(Entry::Waiting { how: Settle::Reject, .. })))
            .collect();
        for tag in rejects {
            plan.frames.push(Frame::Reject { tag });
            plan.kept.extend(self.finish(tag));
        }
        // The run: every tag from `run + 1` on that is settled here.
        let mut named = None;
        while let Some(entry) = self.past.first_entry() {
            if *entry.key() != self.run + 1 {
                break;
            }
            let (tag, entry) = entry.remove_entry();
            self.run = tag;
            if let Entry::Waiting { keep, .. } = entry {
                self.waiting.remove(&tag);
                named = Some(tag);
                plan.kept.extend(keep);
            }
        }
        if let Some(tag) = named {
            plan.frames.push(Frame::Ack { tag, multiple: true });
        }
        // Past a gap: acked on their own once held long enough.
        let mut due = Vec::new();
        for tag in &self.waiting {
            if let Some(Entry::Waiting { since, .. }) = self.past.get(tag) {
                let at = *since + HOLD;
                if at <= now {
                    due.push(*tag);
                } else {
                    plan.next = Some(plan.next.map_or(at, |next: Instant| next.min(at)));
                }
            }
        }
        for tag in due {
            plan.frames.push(Frame::Ack { tag, multiple: false });
            plan.kept.extend(self.finish(tag));
        }
        if self.past.len() > LIMIT {
            warn!(
                waiting_for = self.run + 1,
                remembered = self.past.len(),
                "a delivery was never settled; acking one request at a time on this channel from now on"
            );
            self.stop_coalescing(&mut plan);
        }
        plan
    }

    /// Marks waiting `tag` settled on the broker; what it kept.
    fn finish(&mut self, tag: u64) -> Option<Keep> {
        self.waiting.remove(&tag);
        match self.past.insert(tag, Entry::Done) {
            Some(Entry::Waiting { keep, .. }) => keep,
            _ => None,
        }
    }

    /// Sends everything still waiting on its own, and coalesces no more.
    fn stop_coalescing(&mut self, plan: &mut Plan) {
        self.waiting.clear();
        for (tag, entry) in std::mem::take(&mut self.past) {
            if let Entry::Waiting { how, keep, .. } = entry {
                plan.frames.push(match how {
                    Settle::Ack => Frame::Ack { tag, multiple: false },
                    Settle::Reject => Frame::Reject { tag },
                });
                plan.kept.extend(keep);
            }
        }
        plan.next = None;
        self.coalesce = false;
    }

    /// Whether anything is waiting to be written.
    fn idle(&self) -> bool {
        self.single.is_empty() && self.waiting.is_empty()
    }
}

impl Acks {
    /// The settlements of `channel`, and the task that writes them (it ends with [`Acks::shut`]
    /// or the channel's first failed write). `coalesce`: whether every delivery on the channel
    /// goes through this `Acks` (see the module's notes).
    pub(crate) fn start(channel: Channel, coalesce: bool) -> Arc<Acks> {
        let acks = Arc::new(Acks { channel, state: Mutex::new(State::new(coalesce)), wake: Notify::new() });
        tokio::spawn(Arc::clone(&acks).write());
        acks
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Settles the request delivered under `tag`; `keep` is dropped once that is written (at
    /// once when the channel is gone: the broker then requeues the request itself).
    pub(crate) fn settle(&self, tag: u64, how: Settle, keep: Keep) {
        let mut state = self.lock();
        if state.shut {
            return;
        }
        state.settle(tag, how, Some(keep), Instant::now());
        drop(state);
        self.wake.notify_one();
    }

    /// Records a delivery that is owed no frame (a no-ack consumer's on this channel).
    pub(crate) fn skip(&self, tag: u64) {
        self.lock().skip(tag);
        self.wake.notify_one();
    }

    /// Ends the writer once what is waiting has been written (or failed to be).
    pub(crate) fn shut(&self) {
        self.lock().shut = true;
        self.wake.notify_one();
    }

    /// The writer: waits for settlements, writes the planned frames, drops what they kept.
    async fn write(self: Arc<Self>) {
        loop {
            let (plan, shut) = {
                let mut state = self.lock();
                let now = Instant::now();
                let mut plan = state.plan(now);
                if state.shut {
                    // Closing: the rest cannot wait for a run to form.
                    state.stop_coalescing(&mut plan);
                }
                (plan, state.shut && state.idle())
            };
            if !plan.frames.is_empty() && !self.send(&plan.frames).await {
                self.lock().shut = true;
                self.drop_waiting();
                return;
            }
            drop(plan.kept);
            if shut {
                return;
            }
            match plan.next {
                Some(next) => {
                    let _ = tokio::time::timeout_at(next, self.wake.notified()).await;
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Writes `frames` in order (each is queued before the next); whether all were written.
    async fn send(&self, frames: &[Frame]) -> bool {
        let written = join_all(frames.iter().map(|frame| async move {
            match *frame {
                Frame::Ack { tag, multiple } => self.channel.basic_ack(tag, BasicAckOptions { multiple }).await,
                Frame::Reject { tag } => self.channel.basic_reject(tag, BasicRejectOptions { requeue: false }).await,
            }
        }))
        .await;
        match written.into_iter().find_map(Result::err) {
            None => true,
            Some(e) => {
                debug!(error = %e, "settling requests failed (channel gone; the broker requeues them)");
                false
            }
        }
    }

    /// Drops everything still waiting (the channel is gone).
    fn drop_waiting(&self) {
        let mut state = self.lock();
        state.past.clear();
        state.waiting.clear();
        state.single.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(tag: u64) -> Frame {
        Frame::Ack { tag, multiple: false }
    }

    fn up_to(tag: u64) -> Frame {
        Frame::Ack { tag, multiple: true }
    }

    fn settle(state: &mut State, tags: &[u64], how: Settle, now: Instant) {
        for &tag in tags {
            state.settle(tag, how, None, now);
        }
    }

    #[test]
    fn a_settled_run_is_acked_with_one_multiple_ack_naming_its_last_tag() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[3, 1, 2, 4], Settle::Ack, now);
        assert_eq!(state.plan(now).frames, vec![up_to(4)]);
        settle(&mut state, &[5], Settle::Ack, now);
        assert_eq!(state.plan(now).frames, vec![up_to(5)]);
        assert!(state.past.is_empty());
    }

    #[test]
    fn a_tag_past_a_gap_waits_for_the_run_then_goes_alone_after_the_hold() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[1, 3, 4], Settle::Ack, now);
        let plan = state.plan(now);
        assert_eq!(plan.frames, vec![up_to(1)], "2 still runs: 3 and 4 wait");
        assert_eq!(plan.next, Some(now + HOLD));
        // The hold runs out: 3 and 4 go alone and are never named again.
        let later = now + HOLD;
        assert_eq!(state.plan(later).frames, vec![acked(3), acked(4)]);
        settle(&mut state, &[5], Settle::Ack, later);
        assert_eq!(state.plan(later).frames, vec![], "5 waits behind 2");
        settle(&mut state, &[2], Settle::Ack, later);
        assert_eq!(state.plan(later).frames, vec![up_to(5)], "the run passes 3 and 4 without naming them");
    }

    #[test]
    fn a_run_whose_last_tags_went_alone_names_its_last_unsent_tag() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[2, 3], Settle::Ack, now);
        assert_eq!(state.plan(now + HOLD).frames, vec![acked(2), acked(3)]);
        settle(&mut state, &[1], Settle::Ack, now + HOLD);
        assert_eq!(state.plan(now + HOLD).frames, vec![up_to(1)]);
        assert_eq!(state.run, 3);
    }

    #[test]
    fn rejects_go_alone_before_the_ack_that_covers_them() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[1, 3], Settle::Ack, now);
        settle(&mut state, &[2, 5], Settle::Reject, now);
        let frames = state.plan(now).frames;
        assert_eq!(frames, vec![Frame::Reject { tag: 2 }, Frame::Reject { tag: 5 }, up_to(3)]);
        settle(&mut state, &[4], Settle::Ack, now);
        assert_eq!(state.plan(now).frames, vec![up_to(4)], "5, rejected already, is passed, not named");
        assert_eq!(state.run, 5);
    }

    #[test]
    fn skipped_deliveries_fill_the_run_without_a_frame() {
        let now = Instant::now();
        let mut state = State::new(true);
        state.skip(2);
        settle(&mut state, &[1, 3], Settle::Ack, now);
        assert_eq!(state.plan(now).frames, vec![up_to(3)]);
        state.skip(4);
        assert_eq!(state.plan(now).frames, vec![], "a skipped tag alone needs no frame");
        assert_eq!(state.run, 4);
    }

    #[test]
    fn a_tag_that_never_settles_stops_coalescing_past_the_limit() {
        let now = Instant::now();
        let mut state = State::new(true);
        let tags: Vec<u64> = (2..=LIMIT as u64 + 2).collect();
        settle(&mut state, &tags, Settle::Ack, now);
        let frames = state.plan(now).frames;
        assert_eq!(frames.len(), tags.len(), "each waiting tag goes alone");
        assert!(frames.iter().all(|f| matches!(f, Frame::Ack { multiple: false, .. })));
        assert!(!state.coalesce);
        state.settle(1, Settle::Ack, None, now);
        assert_eq!(state.plan(now).frames, vec![acked(1)]);
    }

    #[test]
    fn without_coalescing_every_settlement_is_its_own_frame_in_arrival_order() {
        let now = Instant::now();
        let mut state = State::new(false);
        settle(&mut state, &[2, 1], Settle::Ack, now);
        settle(&mut state, &[3], Settle::Reject, now);
        assert_eq!(state.plan(now).frames, vec![acked(2), acked(1), Frame::Reject { tag: 3 }]);
    }

    #[test]
    fn a_tag_settled_twice_is_not_named_again() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[1], Settle::Ack, now);
        assert_eq!(state.plan(now).frames, vec![up_to(1)]);
        settle(&mut state, &[1], Settle::Ack, now);
        assert_eq!(state.plan(now).frames, vec![]);
    }
}
