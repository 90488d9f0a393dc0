//! Waiting items kept per caller and served in rotation, one item per caller per turn: how a
//! model's queue (`inference::queue`) and the Classify calls waiting for a turn
//! (`serving::turns`) share out among callers, so a caller with many items waiting delays another
//! caller's next item by about one item per caller, not by all of its own.

use std::collections::{HashMap, VecDeque};

use crate::request::Caller;

pub struct Rotation<T> {
    queued: HashMap<Caller, VecDeque<T>>,
    /// Callers with items, the next to be served first.
    order: VecDeque<Caller>,
    len: usize,
}

impl<T> Default for Rotation<T> {
    fn default() -> Rotation<T> {
        Rotation { queued: HashMap::new(), order: VecDeque::new(), len: 0 }
    }
}

impl<T> Rotation<T> {
    /// Items waiting, over every caller.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items `caller` has waiting.
    pub fn held(&self, caller: Caller) -> usize {
        self.queued.get(&caller).map_or(0, VecDeque::len)
    }

    /// The caller with the most items waiting, and how many.
    pub fn crowding(&self) -> Option<(Caller, usize)> {
        self.queued.iter().map(|(c, q)| (*c, q.len())).max_by_key(|(_, n)| *n)
    }

    /// Adds `item` after `caller`'s others; a caller with none joins the rotation last.
    pub fn push(&mut self, caller: Caller, item: T) {
        let queue = self.queued.entry(caller).or_default();
        if queue.is_empty() {
            self.order.push_back(caller);
        }
        queue.push_back(item);
        self.len += 1;
    }

    /// The item `pop` would take.
    pub fn peek(&self) -> Option<&T> {
        self.queued.get(self.order.front()?)?.front()
    }

    /// The oldest item of the caller whose turn it is; that caller goes last.
    pub fn pop(&mut self) -> Option<T> {
        let caller = self.order.pop_front()?;
        let queue = self.queued.get_mut(&caller).expect("a caller in the rotation has items");
        let item = queue.pop_front().expect("a caller in the rotation has items");
        if queue.is_empty() {
            self.queued.remove(&caller);
        } else {
            self.order.push_back(caller);
        }
        self.len -= 1;
        Some(item)
    }

    /// `caller`'s newest item, taken out of turn.
    pub fn pop_newest(&mut self, caller: Caller) -> Option<T> {
        let queue = self.queued.get_mut(&caller)?;
        let item = queue.pop_back();
        if queue.is_empty() {
            self.queued.remove(&caller);
            self.order.retain(|c| *c != caller);
        }
        self.len -= usize::from(item.is_some());
        item
    }

    /// Keeps only the items `keep` says to, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for queue in self.queued.values_mut() {
            queue.retain(&mut keep);
        }
        self.queued.retain(|_, q| !q.is_empty());
        let queued = &self.queued;
        self.order.retain(|c| queued.contains_key(c));
        self.len = self.queued.values().map(VecDeque::len).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Caller = Caller::connection(1);
    const B: Caller = Caller::connection(2);
    const C: Caller = Caller::connection(3);

    #[test]
    fn callers_take_turns_one_item_each() {
        let mut r = Rotation::default();
        for item in ["a1", "a2", "a3", "a4"] {
            r.push(A, item);
        }
        r.push(B, "b1");
        r.push(C, "c1");
        r.push(B, "b2");
        assert_eq!((r.len(), r.held(A), r.crowding()), (7, 4, Some((A, 4))));
        let served: Vec<_> = std::iter::from_fn(|| {
            let next = r.peek().copied();
            assert_eq!(r.pop(), next, "peek shows what pop takes");
            next
        })
        .collect();
        assert_eq!(served, ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
        assert!(r.is_empty() && r.crowding().is_none());
    }

    #[test]
    fn items_taken_out_of_turn_leave_the_rotation_consistent() {
        let mut r = Rotation::default();
        r.push(A, "a1");
        r.push(B, "b1");
        r.push(A, "a2");
        assert_eq!(r.pop_newest(A), Some("a2"));
        assert_eq!(r.pop_newest(B), Some("b1"));
        assert_eq!(r.pop_newest(C), None);
        r.push(C, "c1");
        r.push(C, "c2");
        r.retain(|item| *item != "c1");
        assert_eq!(r.len(), 2);
        let served: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(served, ["a1", "c2"]);
    }
}
