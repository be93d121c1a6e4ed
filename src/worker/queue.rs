//! The jobs waiting for the worker: highest priority first, first come first served within
//! a priority, cancelled jobs dropped unseen.

use super::protocol::Job;

/// Waiting jobs, each with the order it arrived in.
#[derive(Default)]
pub(crate) struct Queue {
    jobs: Vec<(u64, Job)>,
    clock: u64,
}

impl Queue {
    pub(crate) fn push(&mut self, job: Job) {
        self.clock += 1;
        self.jobs.push((self.clock, job));
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Takes the best job that `eligible` accepts, dropping cancelled jobs it meets:
    /// highest priority first, first come first served within a priority.
    pub(crate) fn pop_best(&mut self, eligible: impl Fn(&Job) -> bool) -> Option<Job> {
        loop {
            let i = self.best(&eligible)?;
            let job = self.jobs.remove(i).1;
            if !job.cancel.is_cancelled() {
                return Some(job);
            }
        }
    }

    /// The best job that `eligible` accepts, without taking it.
    pub(crate) fn peek_best(&mut self, eligible: impl Fn(&Job) -> bool) -> Option<&Job> {
        self.jobs.retain(|(_, job)| !job.cancel.is_cancelled());
        let i = self.best(&eligible)?;
        Some(&self.jobs[i].1)
    }

    fn best(&self, eligible: &impl Fn(&Job) -> bool) -> Option<usize> {
        self.jobs
            .iter()
            .enumerate()
            .filter(|(_, (_, job))| eligible(job))
            .max_by(|(_, a), (_, b)| a.1.priority.cmp(&b.1.priority).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CancelToken, GenerateParams};
    use crate::worker::{Output, Priority, RequestId};

    fn job(id: u64, slot: u64, priority: Priority) -> Job {
        Job {
            recall: None,
            id: RequestId(id),
            slot,
            messages: Vec::new(),
            params: GenerateParams::default(),
            priority,
            cancel: CancelToken::new(),
            output: Output::Text {
                best_of: 1,
                speaker: String::new(),
            },
        }
    }

    #[test]
    fn higher_priorities_first_then_first_come_first_served() {
        let mut queue = Queue::default();
        queue.push(job(1, 1, Priority::Background));
        queue.push(job(2, 2, Priority::Normal));
        queue.push(job(3, 3, Priority::Player));
        queue.push(job(4, 4, Priority::Normal));
        let order: Vec<u64> = std::iter::from_fn(|| queue.pop_best(|_| true))
            .map(|j| j.id.0)
            .collect();
        assert_eq!(order, [3, 2, 4, 1]);
    }

    #[test]
    fn cancelled_and_ineligible_jobs_are_passed_over() {
        let mut queue = Queue::default();
        let cancelled = job(1, 1, Priority::Player);
        cancelled.cancel.cancel();
        queue.push(cancelled);
        queue.push(job(2, 2, Priority::Normal));
        queue.push(job(3, 3, Priority::Normal));
        assert_eq!(queue.peek_best(|j| j.slot != 2).map(|j| j.id.0), Some(3));
        assert_eq!(queue.len(), 2, "the cancelled job is gone");
        assert_eq!(queue.pop_best(|j| j.slot != 2).map(|j| j.id.0), Some(3));
        assert_eq!(queue.pop_best(|j| j.slot != 2).map(|j| j.id.0), None);
        assert_eq!(queue.len(), 1, "the ineligible job waits");
    }
}
