//! [`Acks`]: settles the requests taken on one serving channel (ack or reject), coalescing
//! acks into one `multiple` ack wherever the delivery tags allow it.
//!
//! Why: an ack costs the broker nearly as much as a publish. The raw lapin floor of
//! `rpc-bench` ran at 1.37-1.39× its own throughput at 64 in flight with its consumer in
//! no-ack mode (BENCHMARKS.md, "Batched acks, and the confirm read late"); one `multiple` ack
//! for a run of answered requests keeps at-least-once delivery and saves much of that.
//!
//! What keeps it correct:
//! - The broker numbers the deliveries of a channel 1, 2, 3, … (every delivery, those of no-ack
//!   consumers too), and a `multiple` ack naming tag `t` settles every unsettled delivery up to
//!   `t`. So one is sent only over a run of tags every one of which is settled here: requests
//!   by [`Acks::settle`], deliveries that need no frame (no-ack consumers) by [`Acks::skip`].
//! - A tag is named once at most (the broker closes the channel on an unknown tag): a tag sent
//!   on its own is remembered (as part of a range) until the run passes it, and a `multiple`
//!   ack names the highest tag of its run not sent before.
//! - Rejects are sent on their own, before any `multiple` ack that covers them.
//! - A request answered while an earlier one still runs waits for the run to reach it only
//!   while that gap is younger than [`HOLD`]; once a gap is older (a slow request), everything
//!   past it is acked on its own at once. So a slow request holds back no other request's
//!   prefetch slot beyond the first [`HOLD`].
//! - Every frame follows the reply it settles: [`Acks::settle`] is called once the reply has
//!   been written on the same channel, whose frames the broker handles in order. Frames of one
//!   write are queued in order: lapin queues a frame when its future is first polled, and
//!   `join_all` polls them in order.
//! - What the caller hands in with a settlement (the server's in-flight guard) is dropped once
//!   the frame that settles it has been written (or has failed to be), so a graceful close that
//!   waits for in-flight requests waits for their acks too.
//! - Bounded: tags sent on their own are kept as ranges, which merge; if they fragment past
//!   [`LIMIT`] ranges (tags that never settle, far apart), the channel settles one frame per
//!   request from then on.
//!
//! A channel shared with a caller (`Rpc::create`) may carry deliveries this crate never sees,
//! so its acks are never coalesced ([`Acks::start`] with `coalesce: false`), and neither are
//! those of a retired link ([`Acks::shut`]), whose channel may outlive it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::Channel;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long a gap in the run holds back the tags answered past it.
pub(crate) const HOLD: Duration = Duration::from_millis(10);

/// How many ranges of tags past the run are remembered before coalescing stops.
pub(crate) const LIMIT: usize = 4096;

/// How a request is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Acked: answered, or dropped on purpose.
    Ack,
    /// Rejected without requeue (dead-lettered back to its caller).
    Reject,
    /// Rejected with requeue: handed back unread, for another consumer to take.
    Requeue,
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
    /// `basic.reject`, with or without requeue.
    Reject { tag: u64, requeue: bool },
}

impl Frame {
    fn of(tag: u64, how: Settle) -> Frame {
        match how {
            Settle::Ack => Frame::Ack { tag, multiple: false },
            Settle::Reject => Frame::Reject { tag, requeue: false },
            Settle::Requeue => Frame::Reject { tag, requeue: true },
        }
    }
}

/// What the writer does next: frames in order, and what to drop once they are written.
#[derive(Default)]
struct Plan {
    frames: Vec<Frame>,
    kept: Vec<Keep>,
    /// When to look again if nothing else happens (a gap's [`HOLD`] running out).
    next: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// Every tag up to this one is settled on the broker (or was never owed a frame).
    run: u64,
    /// Tags past `run` settled here, their frames not written yet (when coalescing).
    waiting: BTreeMap<u64, (Settle, Option<Keep>)>,
    /// Tags past `run` settled on the broker already (sent on their own, or owed no frame), as
    /// ranges: first tag -> last tag.
    done: BTreeMap<u64, u64>,
    /// Since when the run has been stopped by a gap with tags settled past it.
    gap_since: Option<Instant>,
    /// Settlements in arrival order, when not coalescing.
    single: Vec<(u64, Settle, Option<Keep>)>,
    /// Set by [`State::new`]; cleared for good by [`State::stop_coalescing`].
    coalesce: bool,
    /// A write failed: the channel is gone, nothing more is written.
    failed: bool,
    /// Frames taken by the writer and not yet written.
    writing: bool,
    /// The link is gone: the writer ends once idle.
    ended: bool,
}

impl State {
    fn new(coalesce: bool) -> Self {
        State { coalesce, ..State::default() }
    }

    fn is_done(&self, tag: u64) -> bool {
        self.done.range(..=tag).next_back().is_some_and(|(_, last)| *last >= tag)
    }

    /// Adds `tag` to the done ranges, merging it with its neighbours.
    fn mark_done(&mut self, tag: u64) {
        let before = self.done.range(..tag).next_back().filter(|(_, last)| **last + 1 == tag).map(|(first, _)| *first);
        let after = self.done.remove(&(tag + 1));
        let first = before.unwrap_or(tag);
        self.done.insert(first, after.unwrap_or(tag));
    }

    fn settle(&mut self, tag: u64, how: Settle, keep: Option<Keep>) {
        if !self.coalesce {
            self.single.push((tag, how, keep));
        } else if tag > self.run && !self.waiting.contains_key(&tag) && !self.is_done(tag) {
            self.waiting.insert(tag, (how, keep));
        } else {
            // Settling a tag twice would name it twice, which closes the channel.
            warn!(tag, "a delivery tag settled twice; ignored");
        }
    }

    fn skip(&mut self, tag: u64) {
        if self.coalesce && tag > self.run && !self.waiting.contains_key(&tag) {
            self.mark_done(tag);
        }
    }

    /// The frames to write now: rejects first, then one `multiple` ack over the settled run,
    /// then, once the gap stopping the run is older than [`HOLD`], the tags past it alone.
    fn plan(&mut self, now: Instant) -> Plan {
        let mut plan = Plan::default();
        if !self.coalesce {
            self.drain_single(&mut plan);
            return plan;
        }
        // Rejects go out on their own, before an ack that may cover them.
        let rejects: Vec<(u64, Settle)> = self
            .waiting
            .iter()
            .filter(|(_, (how, _))| *how != Settle::Ack)
            .map(|(tag, (how, _))| (*tag, *how))
            .collect();
        for (tag, how) in rejects {
            plan.frames.push(Frame::of(tag, how));
            plan.kept.extend(self.send_alone(tag));
        }
        // The run: every tag from `run + 1` on that is settled, here or on the broker.
        let (start, mut named) = (self.run, None);
        loop {
            let next = self.run + 1;
            if let Some((_, keep)) = self.waiting.remove(&next) {
                self.run = next;
                named = Some(next);
                plan.kept.extend(keep);
            } else if let Some(last) = self.done.remove(&next) {
                self.run = last;
            } else {
                break;
            }
        }
        if let Some(tag) = named {
            plan.frames.push(Frame::Ack { tag, multiple: true });
        }
        // Past the gap now stopping the run, if any.
        if self.waiting.is_empty() && self.done.is_empty() {
            self.gap_since = None;
        } else if self.run != start || self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
        if let Some(since) = self.gap_since.filter(|_| !self.waiting.is_empty()) {
            let due = since + HOLD;
            if due <= now {
                let past: Vec<u64> = self.waiting.keys().copied().collect();
                for tag in past {
                    plan.frames.push(Frame::Ack { tag, multiple: false });
                    plan.kept.extend(self.send_alone(tag));
                }
            } else {
                plan.next = Some(due);
            }
        }
        if self.done.len() > LIMIT {
            warn!(
                waiting_for = self.run + 1,
                ranges = self.done.len(),
                "deliveries past an unsettled one are too scattered to track; acking one request at a time on this channel from now on"
            );
            self.stop_coalescing();
            self.drain_single(&mut plan);
            plan.next = None;
        }
        plan
    }

    /// Moves waiting `tag` to the done ranges; what it kept.
    fn send_alone(&mut self, tag: u64) -> Option<Keep> {
        let keep = self.waiting.remove(&tag).and_then(|(_, keep)| keep);
        self.mark_done(tag);
        keep
    }

    /// Coalesces no more: everything still waiting goes out on its own, in tag order.
    fn stop_coalescing(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        self.single.extend(waiting.into_iter().map(|(tag, (how, keep))| (tag, how, keep)));
        self.done.clear();
        self.gap_since = None;
        self.coalesce = false;
    }

    /// Adds the settlements made while not coalescing to `plan`, one frame each.
    fn drain_single(&mut self, plan: &mut Plan) {
        for (tag, how, keep) in self.single.drain(..) {
            plan.frames.push(Frame::of(tag, how));
            plan.kept.extend(keep);
        }
    }

    /// Whether everything settled here has been written, or never will be (the channel failed).
    fn settled(&self) -> bool {
        self.failed || self.idle()
    }

    /// Whether everything settled here has been written.
    fn idle(&self) -> bool {
        !self.writing && self.single.is_empty() && self.waiting.is_empty()
    }
}

impl Acks {
    /// The settlements of `channel`, and the task that writes them (it ends once the link is
    /// gone and everything is written, or at the channel's first failed write). `coalesce`:
    /// whether every delivery on the channel goes through this `Acks` (see the module's notes).
    pub(crate) fn start(channel: Channel, coalesce: bool) -> Arc<Acks> {
        let acks = Arc::new(Acks { channel, state: Mutex::new(State::new(coalesce)), wake: Notify::new() });
        tokio::spawn(Arc::clone(&acks).write());
        acks
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Settles the request delivered under `tag`; `keep` is dropped once that is written (at
    /// once when the channel has failed: the broker requeues the request itself).
    pub(crate) fn settle(&self, tag: u64, how: Settle, keep: Keep) {
        let mut state = self.lock();
        if state.failed {
            return;
        }
        state.settle(tag, how, Some(keep));
        drop(state);
        self.wake.notify_one();
    }

    /// Records a delivery that is owed no frame (a no-ack consumer's on this channel).
    pub(crate) fn skip(&self, tag: u64) {
        self.lock().skip(tag);
        self.wake.notify_one();
    }

    /// The link retired: what waits is written at once, and every later settlement alone (the
    /// channel of an `Rpc` on a caller's channel stays open after the link).
    pub(crate) fn shut(&self) {
        let mut state = self.lock();
        if state.coalesce {
            state.stop_coalescing();
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Waits until every settlement made so far is written (or has failed to be), at most
    /// `limit`: a close waits for it before it closes the connection.
    pub(crate) async fn flushed(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until && !self.lock().settled() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The link is gone: the writer ends once everything is written.
    pub(crate) fn end(&self) {
        self.lock().ended = true;
        self.wake.notify_one();
    }

    /// The writer: waits for settlements, writes the planned frames, drops what they kept.
    async fn write(self: Arc<Self>) {
        loop {
            let (plan, end) = {
                let mut state = self.lock();
                let plan = state.plan(Instant::now());
                state.writing = !plan.frames.is_empty();
                (plan, state.ended && state.single.is_empty() && state.waiting.is_empty())
            };
            if !plan.frames.is_empty() && !self.send(&plan.frames).await {
                let mut state = self.lock();
                state.failed = true;
                state.waiting.clear();
                state.single.clear();
                state.writing = false;
                return;
            }
            self.lock().writing = false;
            drop(plan.kept);
            if end {
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
                Frame::Reject { tag, requeue } => self.channel.basic_reject(tag, BasicRejectOptions { requeue }).await,
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

    fn rejected(tag: u64) -> Frame {
        Frame::Reject { tag, requeue: false }
    }

    fn settle(state: &mut State, tags: &[u64], how: Settle) {
        for &tag in tags {
            state.settle(tag, how, None);
        }
    }

    #[test]
    fn a_settled_run_is_acked_with_one_multiple_ack_naming_its_last_tag() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[3, 1, 2, 4], Settle::Ack);
        assert_eq!(state.plan(now).frames, vec![up_to(4)]);
        settle(&mut state, &[5], Settle::Ack);
        assert_eq!(state.plan(now).frames, vec![up_to(5)]);
        assert!(state.waiting.is_empty() && state.done.is_empty() && state.gap_since.is_none());
    }

    #[test]
    fn tags_past_a_gap_wait_for_the_run_then_go_alone_once_the_gap_is_older_than_the_hold() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[1, 3, 4], Settle::Ack);
        let plan = state.plan(now);
        assert_eq!(plan.frames, vec![up_to(1)], "2 still runs: 3 and 4 wait");
        assert_eq!(plan.next, Some(now + HOLD));
        let later = now + HOLD;
        assert_eq!(state.plan(later).frames, vec![acked(3), acked(4)]);
        // The gap is old: what is answered past it goes at once.
        settle(&mut state, &[5], Settle::Ack);
        assert_eq!(state.plan(later).frames, vec![acked(5)]);
        assert_eq!(state.done.len(), 1, "3, 4 and 5 are one range");
        // 2 ends: the run passes 3 to 5 without naming them.
        settle(&mut state, &[2], Settle::Ack);
        assert_eq!(state.plan(later).frames, vec![up_to(2)]);
        assert_eq!(state.run, 5);
        assert!(state.done.is_empty() && state.gap_since.is_none());
    }

    #[test]
    fn a_run_whose_last_tags_went_alone_names_its_last_unsent_tag() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[2, 3], Settle::Ack);
        assert_eq!(state.plan(now).frames, vec![]);
        assert_eq!(state.plan(now + HOLD).frames, vec![acked(2), acked(3)]);
        settle(&mut state, &[1], Settle::Ack);
        assert_eq!(state.plan(now + HOLD).frames, vec![up_to(1)]);
        assert_eq!(state.run, 3);
    }

    #[test]
    fn rejects_go_alone_before_the_ack_that_covers_them() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[1, 3], Settle::Ack);
        settle(&mut state, &[2, 5], Settle::Reject);
        let frames = state.plan(now).frames;
        assert_eq!(frames, vec![rejected(2), rejected(5), up_to(3)]);
        settle(&mut state, &[4], Settle::Ack);
        assert_eq!(state.plan(now).frames, vec![up_to(4)], "5, rejected already, is passed, not named");
        assert_eq!(state.run, 5);
    }

    #[test]
    fn a_request_handed_back_is_rejected_with_requeue_alone_and_the_run_passes_it() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[1, 3], Settle::Ack);
        settle(&mut state, &[2], Settle::Requeue);
        assert_eq!(state.plan(now).frames, vec![Frame::Reject { tag: 2, requeue: true }, up_to(3)]);
        assert_eq!(state.run, 3);
        let mut single = State::new(false);
        settle(&mut single, &[1], Settle::Requeue);
        assert_eq!(single.plan(now).frames, vec![Frame::Reject { tag: 1, requeue: true }]);
    }

    #[test]
    fn skipped_deliveries_fill_the_run_without_a_frame() {
        let now = Instant::now();
        let mut state = State::new(true);
        state.skip(2);
        settle(&mut state, &[1, 3], Settle::Ack);
        assert_eq!(state.plan(now).frames, vec![up_to(3)]);
        state.skip(4);
        assert_eq!(state.plan(now).frames, vec![], "a skipped tag alone needs no frame");
        assert_eq!(state.run, 4);
    }

    #[test]
    fn scattered_tags_past_an_unsettled_one_stop_coalescing_past_the_limit() {
        let now = Instant::now();
        let mut state = State::new(true);
        let tags: Vec<u64> = (1..=LIMIT as u64 + 1).map(|n| 2 * n + 1).collect();
        settle(&mut state, &tags, Settle::Ack);
        assert_eq!(state.plan(now).frames, vec![]);
        let frames = state.plan(now + HOLD).frames;
        assert_eq!(frames.len(), tags.len(), "each waiting tag goes alone");
        assert!(frames.iter().all(|f| matches!(f, Frame::Ack { multiple: false, .. })));
        assert!(!state.coalesce && state.done.is_empty());
        state.settle(1, Settle::Ack, None);
        assert_eq!(state.plan(now + HOLD).frames, vec![acked(1)]);
    }

    #[test]
    fn stopping_coalescing_sends_what_waits_alone_in_tag_order() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[3], Settle::Ack);
        settle(&mut state, &[2], Settle::Reject);
        state.stop_coalescing();
        assert_eq!(state.plan(now).frames, vec![rejected(2), acked(3)]);
        settle(&mut state, &[1], Settle::Ack);
        assert_eq!(state.plan(now).frames, vec![acked(1)]);
    }

    #[test]
    fn without_coalescing_every_settlement_is_its_own_frame_in_arrival_order() {
        let now = Instant::now();
        let mut state = State::new(false);
        settle(&mut state, &[2, 1], Settle::Ack);
        settle(&mut state, &[3], Settle::Reject);
        assert_eq!(state.plan(now).frames, vec![acked(2), acked(1), rejected(3)]);
    }

    #[test]
    fn a_tag_settled_twice_is_not_named_again() {
        let now = Instant::now();
        let mut state = State::new(true);
        settle(&mut state, &[1], Settle::Ack);
        assert_eq!(state.plan(now).frames, vec![up_to(1)]);
        settle(&mut state, &[1], Settle::Ack);
        assert_eq!(state.plan(now).frames, vec![]);
        settle(&mut state, &[3, 3], Settle::Ack);
        assert_eq!(state.plan(now + HOLD).frames, vec![]);
        assert_eq!(state.plan(now + HOLD * 2).frames, vec![acked(3)]);
        settle(&mut state, &[3], Settle::Ack);
        assert_eq!(state.plan(now + HOLD * 2).frames, vec![], "3 went alone already");
    }
}
