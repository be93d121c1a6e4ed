//! Many conversations on one model: each conversation's [`Session`] kept under a key, the
//! least recently used dropped when more are kept than fit, in number or in bytes
//! (llama.cpp's slots). Caches of conversations that ended are pooled for the next new one
//! instead of going back to the allocator.

use std::collections::HashMap;

use super::load::Engine;
use super::params::Session;
use super::tokenizer::TokenId;

/// The fewest tokens a new conversation must share with a kept one for
/// [`SessionSlots::take_for`] to start from a copy of its cache (shorter prefixes are
/// cheaper to compute than to copy and bookkeep).
pub const MIN_SHARED_PREFIX: usize = 32;

/// Conversation caches by key (an NPC, a chat window), at most `capacity` of them.
///
/// Take a conversation's session before generating in it and put it back afterwards: its
/// cached tokens are then reused by the next prompt that starts with them. Taking a key that
/// has no session makes a fresh one, first dropping the least recently used sessions so
/// that, once it is put back, at most `capacity` remain. The most recently put back session
/// is the most recently used one. A capacity of 0 behaves as 1.
///
/// A session dropped to make room, or [forgotten](Self::forget), is cleared and kept as a
/// spare (kept and spare sessions together stay within `capacity`); the next new
/// conversation reuses its buffers rather than allocating. Spares count in
/// [`cache_bytes`](Self::cache_bytes) and go first when the byte budget is short.
///
/// ```no_run
/// use bevy_llm_dialogue::engine::{CancelToken, ChatMessage, Engine, EngineConfig, GenerateParams, SessionSlots};
///
/// let mut engine = Engine::load("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf", EngineConfig::default())?;
/// let mut slots = SessionSlots::new(4);
/// let npc = 7;
/// let mut session = slots.take(npc, &engine);
/// let messages = [ChatMessage::user("Hello!")];
/// let line = engine.chat(&mut session, &messages, &GenerateParams::default(), &CancelToken::new(), |_| {})?;
/// slots.put(npc, session);
/// assert!(!line.text.is_empty() || line.stats.generated_tokens > 0);
/// # Ok::<(), bevy_llm_dialogue::engine::EngineError>(())
/// ```
#[derive(Debug)]
pub struct SessionSlots {
    slots: HashMap<u64, Slot>,
    /// Cleared sessions whose buffers the next new conversation reuses.
    spare: Vec<Session>,
    capacity: usize,
    /// The most bytes the kept sessions' caches may hold together.
    budget: Option<usize>,
    clock: u64,
}

#[derive(Debug)]
struct Slot {
    session: Session,
    last_used: u64,
}

impl SessionSlots {
    /// No sessions; at most `capacity` kept at once.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: HashMap::new(),
            spare: Vec::new(),
            capacity,
            budget: None,
            clock: 0,
        }
    }

    /// Also keeps the caches within `bytes` together: putting a session back drops the least
    /// recently used others until they fit (the session just put back always stays). `None`:
    /// only the number of sessions is bounded.
    pub fn with_budget(mut self, bytes: Option<usize>) -> Self {
        self.budget = bytes;
        self
    }

    /// The byte budget, as given to [`with_budget`](Self::with_budget).
    pub fn budget(&self) -> Option<usize> {
        self.budget
    }

    /// The session kept for `key`, removed from the slots until [`put`](Self::put) back, or
    /// a fresh one from `engine` after dropping the least recently used sessions to make room.
    pub fn take(&mut self, key: u64, engine: &Engine) -> Session {
        self.take_or_else(key, || engine.new_session())
    }

    /// A spare cleared session if one is pooled, otherwise `fresh()`.
    fn reuse_or(&mut self, fresh: impl FnOnce() -> Session) -> Session {
        self.spare.pop().unwrap_or_else(fresh)
    }

    /// Like [`take`](Self::take), for a conversation about to run `prompt`: one with nothing
    /// kept starts from a copy of the kept conversation whose cache shares the longest
    /// prefix with `prompt` (at least [`MIN_SHARED_PREFIX`] tokens), so a world preamble or a
    /// brief that many NPCs' prompts begin with is computed once, not once per NPC.
    pub fn take_for(&mut self, key: u64, prompt: &[TokenId], engine: &Engine) -> Session {
        if !self.slots.contains_key(&key)
            && let Some((shared, source)) = self
                .slots
                .values()
                .map(|s| (s.session.common_prefix(prompt), &s.session))
                .max_by_key(|(shared, _)| *shared)
            && shared >= MIN_SHARED_PREFIX
            && let Ok(mut copy) = source.fork()
        {
            copy.truncate(shared);
            // Copied before making room, so the source cannot be the one evicted first.
            self.evict_lru(self.capacity.saturating_sub(1));
            return copy;
        }
        self.take(key, engine)
    }

    fn take_or_else(&mut self, key: u64, fresh: impl FnOnce() -> Session) -> Session {
        match self.slots.remove(&key) {
            Some(slot) => slot.session,
            None => {
                self.evict_lru(self.capacity.saturating_sub(1));
                self.reuse_or(fresh)
            }
        }
    }

    /// Keeps `session` for `key` as the most recently used, replacing any session kept for it.
    pub fn put(&mut self, key: u64, session: Session) {
        if !self.slots.contains_key(&key) {
            self.evict_lru(self.capacity.saturating_sub(1));
        }
        self.clock += 1;
        let last_used = self.clock;
        self.slots.insert(key, Slot { session, last_used });
        let room = self.capacity.max(1).saturating_sub(self.slots.len());
        self.spare.truncate(room);
        if let Some(budget) = self.budget {
            self.shrink_to_bytes(budget);
        }
    }

    /// Drops least recently used sessions until the kept caches hold at most `bytes`, or
    /// only the most recently used is left. A caller whose sessions are partly out (being
    /// generated in) passes the budget less what those hold.
    pub fn shrink_to_bytes(&mut self, bytes: usize) {
        while self.cache_bytes() > bytes && self.spare.pop().is_some() {}
        while self.slots.len() > 1 && self.cache_bytes() > bytes {
            let keep = self.slots.len() - 1;
            self.evict_lru(keep);
            self.spare.clear();
        }
    }

    /// Ends the conversation kept for `key`: its session is cleared and pooled for the next
    /// new conversation. Whether there was one.
    pub fn forget(&mut self, key: u64) -> bool {
        match self.slots.remove(&key) {
            Some(slot) => {
                self.pool(slot.session);
                true
            }
            None => false,
        }
    }

    /// Drops every session, spares included (they belong to a model that is being replaced).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.spare.clear();
    }

    /// Spare sessions pooled for reuse.
    pub fn spare(&self) -> usize {
        self.spare.len()
    }

    /// Keeps `session`'s buffers for the next new conversation if kept and spare sessions
    /// stay within the capacity; otherwise drops it.
    fn pool(&mut self, mut session: Session) {
        if self.slots.len() + self.spare.len() < self.capacity.max(1) {
            session.clear();
            self.spare.push(session);
        }
    }

    /// Sessions kept.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no session is kept.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The most sessions kept at once, as given to [`new`](Self::new).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by the key/value caches of the sessions kept and pooled.
    pub fn cache_bytes(&self) -> usize {
        self.slots
            .values()
            .map(|s| &s.session)
            .chain(&self.spare)
            .map(Session::cache_bytes)
            .sum()
    }

    /// Drops least recently used sessions until at most `keep` remain.
    fn evict_lru(&mut self, keep: usize) {
        while self.slots.len() > keep {
            let Some(oldest) = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
            else {
                return;
            };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.pool(slot.session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::KvCache;
    use super::*;

    fn fresh() -> Session {
        Session::new(KvCache::new())
    }

    fn keys(slots: &SessionSlots) -> Vec<u64> {
        let mut keys: Vec<u64> = slots.slots.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_taken_session_comes_back_with_its_tokens() {
        let mut slots = SessionSlots::new(2);
        let mut session = slots.take_or_else(1, fresh);
        session.tokens = vec![5, 6];
        slots.put(1, session);
        assert_eq!(slots.take_or_else(1, fresh).cached_tokens(), [5, 6]);
        assert!(slots.is_empty(), "a taken session is out until put back");
    }

    #[test]
    fn a_new_conversation_evicts_the_least_recently_used() {
        let mut slots = SessionSlots::new(3);
        for key in [1, 2, 3] {
            let session = slots.take_or_else(key, fresh);
            slots.put(key, session);
        }
        // 1 is used again, so 2 is now the oldest.
        let session = slots.take_or_else(1, fresh);
        slots.put(1, session);
        let session = slots.take_or_else(4, fresh);
        assert_eq!(
            keys(&slots),
            [1, 3],
            "room is made before the new one is put back"
        );
        slots.put(4, session);
        assert_eq!(keys(&slots), [1, 3, 4]);
        assert_eq!((slots.len(), slots.capacity()), (3, 3));

        // Taking a kept key evicts nothing.
        let session = slots.take_or_else(3, fresh);
        assert_eq!(keys(&slots), [1, 4]);
        slots.put(3, session);
        assert!(slots.forget(1));
        assert!(!slots.forget(1));
        assert_eq!(keys(&slots), [3, 4]);
        slots.clear();
        assert!(slots.is_empty());
    }

    #[test]
    fn put_alone_keeps_within_capacity_and_zero_keeps_one() {
        let mut slots = SessionSlots::new(2);
        for key in 1..=5 {
            slots.put(key, fresh());
        }
        assert_eq!(keys(&slots), [4, 5]);

        let mut none = SessionSlots::new(0);
        for key in 1..=3 {
            let session = none.take_or_else(key, fresh);
            none.put(key, session);
        }
        assert_eq!(keys(&none), [3]);
        assert_eq!(none.cache_bytes(), 0);
    }

    #[test]
    fn ended_conversations_lend_their_buffers_to_new_ones() {
        let made = std::cell::Cell::new(0);
        let fresh = || {
            made.set(made.get() + 1);
            fresh()
        };
        let mut slots = SessionSlots::new(2);
        for key in [1, 2] {
            let mut session = slots.take_or_else(key, fresh);
            session.tokens = vec![key as TokenId];
            slots.put(key, session);
        }
        assert_eq!(made.get(), 2);

        // A third conversation evicts the first and reuses its session, cleared.
        let third = slots.take_or_else(3, fresh);
        assert_eq!(made.get(), 2, "the evicted session was reused");
        assert!(
            third.cached_tokens().is_empty(),
            "a reused session starts empty"
        );
        slots.put(3, third);

        // A forgotten conversation is pooled, within the capacity, and reused next.
        assert!(slots.forget(2));
        assert_eq!((slots.len(), slots.spare()), (1, 1));
        let fourth = slots.take_or_else(4, fresh);
        assert_eq!((made.get(), slots.spare()), (2, 0));
        slots.put(4, fourth);

        // Kept and spare sessions never exceed the capacity; clear drops the spares.
        assert!(slots.forget(3));
        slots.put(5, fresh());
        assert_eq!(slots.len() + slots.spare(), 2);
        assert!(slots.forget(4));
        slots.clear();
        assert_eq!((slots.len(), slots.spare()), (0, 0));
    }
}
