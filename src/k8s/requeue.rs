//! Passes planned for later — a token's refresh, a retry — kept here instead of in
//! kube-runtime's scheduler.
//!
//! Every Ready binding has one: at 10,000 bindings, 10,000 for hours. kube-runtime's scheduler
//! keeps each as two copies of its request (an object reference with its own name and
//! namespace strings) in a delay queue and a hash map, ~600 bytes; it was the third-largest
//! part of the controller's memory (BENCHMARKS.md, issue 19). Here a binding's next pass is
//! its key, once, and a time. The semantics are the scheduler's: a binding has at most one
//! planned pass, and the earlier of two plans wins; when it is due, its pass is queued like
//! any other (kube-runtime's queue still merges it with a pass already queued).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::tracker::BindingKey;

#[derive(Default)]
struct Inner {
    /// Each binding's next pass.
    at: HashMap<Arc<BindingKey>, Instant>,
    /// The same, earliest first. An entry whose time is no longer its binding's (an earlier
    /// plan replaced it, or the binding was forgotten) is dropped when it comes up.
    by_time: BinaryHeap<Reverse<(Instant, Arc<BindingKey>)>>,
}

/// The planned passes. Cheap to clone.
#[derive(Clone, Default)]
pub struct Requeues {
    inner: Arc<Mutex<Inner>>,
    /// Wakes [`Self::drive`] when a plan became the earliest.
    earliest_changed: Arc<Notify>,
}

impl Requeues {
    /// Plan a pass of `key` in `after`, unless one is planned sooner.
    pub fn after(&self, key: &BindingKey, after: Duration) {
        let at = Instant::now() + after;
        let mut inner = self.lock();
        match inner.at.get(key) {
            Some(planned) if *planned <= at => return,
            _ => {}
        }
        let earliest = inner.by_time.peek().is_none_or(|Reverse((t, _))| at < *t);
        let key = match inner.at.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::new(key.clone()),
        };
        inner.at.insert(key.clone(), at);
        inner.by_time.push(Reverse((at, key)));
        drop(inner);
        if earliest {
            self.earliest_changed.notify_one();
        }
    }

    /// Drop the planned pass of a binding that is gone.
    pub fn forget(&self, key: &BindingKey) {
        self.lock().at.remove(key);
    }

    /// Bindings with a planned pass.
    pub fn len(&self) -> usize {
        self.lock().at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hand each binding to `due` when its pass is due. Runs until dropped.
    pub async fn drive(&self, due: impl Fn(&BindingKey)) {
        loop {
            let next = self.pop_due(&due);
            let changed = self.earliest_changed.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Hand over every due binding; the time of the next plan, if any.
    fn pop_due(&self, due: &impl Fn(&BindingKey)) -> Option<Instant> {
        let now = Instant::now();
        let mut ready = Vec::new();
        let next = {
            let mut inner = self.lock();
            loop {
                let Some(Reverse((at, _))) = inner.by_time.peek() else {
                    break None;
                };
                if *at > now {
                    break Some(*at);
                }
                let Some(Reverse((at, key))) = inner.by_time.pop() else {
                    break None;
                };
                if inner.at.get(&key) == Some(&at) {
                    inner.at.remove(&key);
                    ready.push(key);
                }
            }
        };
        for key in ready {
            due(&key);
        }
        next
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::binding::Version;

    fn key(name: &str) -> BindingKey {
        BindingKey {
            version: Version::V1beta2,
            namespace: "team".into(),
            name: name.into(),
        }
    }

    /// Runs `drive` and returns what it handed over, with the (paused) time it did.
    fn driven(requeues: &Requeues) -> Arc<Mutex<Vec<(String, Duration)>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (r, s, start) = (requeues.clone(), seen.clone(), Instant::now());
        tokio::spawn(async move {
            r.drive(move |k| s.lock().unwrap().push((k.name.clone(), start.elapsed())))
                .await
        });
        seen
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test(start_paused = true)]
    async fn each_binding_is_handed_over_once_when_due_and_the_earlier_plan_wins() {
        let requeues = Requeues::default();
        let seen = driven(&requeues);
        requeues.after(&key("late"), secs(300));
        requeues.after(&key("soon"), secs(60));
        // A later plan does not move an earlier one; an earlier one replaces a later one.
        requeues.after(&key("soon"), secs(600));
        requeues.after(&key("late"), secs(120));
        assert_eq!(requeues.len(), 2);

        tokio::time::sleep(secs(59)).await;
        assert!(seen.lock().unwrap().is_empty(), "nothing before it is due");
        tokio::time::sleep(secs(3600)).await;
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("soon".to_string(), secs(60)),
                ("late".to_string(), secs(120))
            ],
            "each once, at its earliest plan (the replaced 300 s plan never fires)"
        );
        assert!(requeues.is_empty());

        // Once handed over, a binding can be planned again.
        requeues.after(&key("soon"), secs(10));
        tokio::time::sleep(secs(11)).await;
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_plan_earlier_than_the_one_being_waited_for_is_not_late() {
        let requeues = Requeues::default();
        let seen = driven(&requeues);
        requeues.after(&key("hour"), secs(3600));
        tokio::time::sleep(secs(1)).await;
        // The driver sleeps until the hour; a plan for 5 s from now must wake it.
        requeues.after(&key("now"), secs(5));
        tokio::time::sleep(secs(6)).await;
        assert_eq!(*seen.lock().unwrap(), [("now".to_string(), secs(6))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_binding_is_not_handed_over() {
        let requeues = Requeues::default();
        let seen = driven(&requeues);
        requeues.after(&key("gone"), secs(30));
        requeues.after(&key("kept"), secs(40));
        requeues.forget(&key("gone"));
        tokio::time::sleep(secs(60)).await;
        assert_eq!(*seen.lock().unwrap(), [("kept".to_string(), secs(40))]);
    }
}
