//! Admission: at most `max_runs` runs at once, a bounded FIFO queue behind them, and a per-uid
//! limit on what one user may hold (active and queued). Pure bookkeeping, one owner (the
//! daemon's accept loop); every request gets exactly one answer: started now, deferred (then
//! started, or cancelled when its client leaves), or rejected with a reason token.

use std::collections::{BTreeMap, VecDeque};

use super::protocol::reason;

/// A request's place in admission.
pub type Ticket = u64;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_runs: usize,
    pub queue: usize,
    pub per_uid: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Start(Ticket),
    /// Waiting at `position` (1 = next to start).
    Defer(Ticket, usize),
    Reject(&'static str, String),
}

#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    next: Ticket,
    active: BTreeMap<Ticket, u32>,
    queue: VecDeque<(Ticket, u32)>,
    closed: bool,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Admission {
            limits,
            next: 0,
            active: BTreeMap::new(),
            queue: VecDeque::new(),
            closed: false,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn active(&self) -> usize {
        self.active.len()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn held_by(&self, uid: u32) -> usize {
        self.active.values().filter(|u| **u == uid).count()
            + self.queue.iter().filter(|(_, u)| *u == uid).count()
    }

    /// A new request from `uid`.
    pub fn request(&mut self, uid: u32) -> Decision {
        if self.closed {
            return Decision::Reject(
                reason::SHUTTING_DOWN,
                "the daemon is stopping; no new runs".into(),
            );
        }
        if self.held_by(uid) >= self.limits.per_uid {
            return Decision::Reject(
                reason::UID_LIMIT,
                format!(
                    "uid {uid} already has {} runs active or queued (--max-runs-per-uid {})",
                    self.held_by(uid),
                    self.limits.per_uid
                ),
            );
        }
        let ticket = self.next;
        self.next += 1;
        if self.active.len() < self.limits.max_runs && self.queue.is_empty() {
            self.active.insert(ticket, uid);
            return Decision::Start(ticket);
        }
        if self.queue.len() < self.limits.queue {
            self.queue.push_back((ticket, uid));
            return Decision::Defer(ticket, self.queue.len());
        }
        Decision::Reject(
            reason::QUEUE_FULL,
            format!(
                "{} runs active (--max-runs {}) and {} queued (--queue {})",
                self.active.len(),
                self.limits.max_runs,
                self.queue.len(),
                self.limits.queue
            ),
        )
    }

    /// A run ended, or a queued request's client left: the tickets that start now.
    pub fn release(&mut self, ticket: Ticket) -> Vec<Ticket> {
        self.active.remove(&ticket);
        self.queue.retain(|(t, _)| *t != ticket);
        let mut started = Vec::new();
        while self.active.len() < self.limits.max_runs && !self.closed {
            let Some((t, uid)) = self.queue.pop_front() else {
                break;
            };
            self.active.insert(t, uid);
            started.push(t);
        }
        started
    }

    /// Where a queued ticket waits now (1 = next), if it does.
    pub fn position(&self, ticket: Ticket) -> Option<usize> {
        self.queue
            .iter()
            .position(|(t, _)| *t == ticket)
            .map(|p| p + 1)
    }

    /// Stop admitting: the queued tickets, to be told `shutting_down`.
    pub fn close(&mut self) -> Vec<Ticket> {
        self.closed = true;
        self.queue.drain(..).map(|(t, _)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adm(max_runs: usize, queue: usize, per_uid: usize) -> Admission {
        Admission::new(Limits {
            max_runs,
            queue,
            per_uid,
        })
    }

    #[test]
    fn runs_start_then_queue_in_order_then_are_rejected() {
        let mut a = adm(2, 2, 10);
        assert_eq!(a.request(1000), Decision::Start(0));
        assert_eq!(a.request(1000), Decision::Start(1));
        assert_eq!(a.request(1001), Decision::Defer(2, 1));
        assert_eq!(a.request(1002), Decision::Defer(3, 2));
        assert!(matches!(
            a.request(1003),
            Decision::Reject(reason::QUEUE_FULL, _)
        ));
        // The first queued starts when a slot frees; the second moves up.
        assert_eq!(a.release(0), vec![2]);
        assert_eq!(a.position(3), Some(1));
        assert_eq!((a.active(), a.queued()), (2, 1));
    }

    #[test]
    fn a_queued_client_that_leaves_frees_its_place_and_never_starts() {
        let mut a = adm(1, 3, 10);
        assert_eq!(a.request(1), Decision::Start(0));
        assert_eq!(a.request(1), Decision::Defer(1, 1));
        assert_eq!(a.request(2), Decision::Defer(2, 2));
        assert!(a.release(1).is_empty(), "a cancelled ticket starts nothing");
        assert_eq!(a.position(2), Some(1));
        assert_eq!(a.release(0), vec![2]);
        assert_eq!(a.position(1), None);
    }

    #[test]
    fn one_uid_cannot_hold_more_than_its_limit() {
        let mut a = adm(1, 10, 2);
        assert_eq!(a.request(7), Decision::Start(0));
        assert_eq!(a.request(7), Decision::Defer(1, 1));
        assert!(matches!(
            a.request(7),
            Decision::Reject(reason::UID_LIMIT, _)
        ));
        assert!(matches!(a.request(8), Decision::Defer(..)));
    }

    #[test]
    fn closing_rejects_the_queue_and_admits_nothing() {
        let mut a = adm(1, 5, 5);
        a.request(1);
        a.request(2);
        assert_eq!(a.close(), vec![1]);
        assert!(matches!(
            a.request(3),
            Decision::Reject(reason::SHUTTING_DOWN, _)
        ));
        assert!(a.release(0).is_empty());
    }
}
