//! Which server last served a prompt's prefix, so that the next turn of a
//! conversation (or another request with the same system prompt) can go
//! where that prefix may still be in the KV cache.
//!
//! A prompt is rendered to text (role and content of each message, or the
//! `prompt`), cut into blocks of `BLOCK` characters, and each complete block
//! is hashed together with everything before it: a chain of hashes where
//! equal hashes mean equal prefixes. A conversation that grows keeps its
//! earlier blocks, so its chain extends the one of its last turn. The store
//! maps block hashes to the server that last served them, least recently
//! used first out, bounded in entries.

use lru::LruCache;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// Characters per block: long enough that a chain stays short, short
/// enough that a system prompt of a few lines is several blocks.
pub const BLOCK: usize = 128;

/// The chained block hashes of one prompt, shortest prefix first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptChain(pub Vec<u64>);

impl PromptChain {
    /// The chain of a rendered prompt.
    pub fn of_text(text: &str) -> PromptChain {
        let mut hashes = Vec::new();
        let mut hasher = std::hash::DefaultHasher::new();
        let mut block = 0;
        for c in text.chars() {
            c.hash(&mut hasher);
            block += 1;
            if block == BLOCK {
                // The hasher carries the whole prefix on into the next block.
                hashes.push(hasher.finish());
                block = 0;
            }
        }
        PromptChain(hashes)
    }

    /// The chain of an OpenAI request body: its messages (role and text
    /// content, in order) or its `prompt`; empty for anything else.
    pub fn of_body(body: &[u8]) -> PromptChain {
        match render(body) {
            Some(text) => PromptChain::of_text(&text),
            None => PromptChain::default(),
        }
    }

    pub fn blocks(&self) -> usize {
        self.0.len()
    }
}

/// The text a chain is made of: each message's role and text content, one
/// per line (`role\ncontent\n`), or the `prompt`; `None` for a body that
/// is not JSON.
pub fn render(body: &[u8]) -> Option<String> {
    let v = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    {
        let mut text = String::new();
        if let Some(messages) = v["messages"].as_array() {
            for m in messages {
                text.push_str(m["role"].as_str().unwrap_or(""));
                text.push('\n');
                push_text(&m["content"], &mut text);
                text.push('\n');
            }
        } else {
            push_text(&v["prompt"], &mut text);
        }
        Some(text)
    }
}

fn push_text(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => out.push_str(s),
        serde_json::Value::Array(parts) => parts.iter().for_each(|p| push_text(p, out)),
        serde_json::Value::Object(o) => {
            if let Some(t) = o.get("text") {
                push_text(t, out);
            }
        }
        _ => {}
    }
}

/// What the store knows of a prompt: the server with the longest cached
/// prefix, and how many blocks of the prompt that prefix covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub server: u64,
    pub blocks: usize,
}

pub struct PrefixStore {
    /// Block hash → id of the server that last served it.
    blocks: Mutex<LruCache<u64, u64>>,
}

impl PrefixStore {
    pub fn new(entries: usize) -> PrefixStore {
        let cap = NonZeroUsize::new(entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        PrefixStore {
            blocks: Mutex::new(LruCache::new(cap)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<u64, u64>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The longest prefix of `chain` some server served (looked at without
    /// refreshing it: only serving it again does).
    pub fn longest(&self, chain: &PromptChain) -> Option<Match> {
        let blocks = self.lock();
        chain.0.iter().enumerate().rev().find_map(|(i, h)| {
            blocks.peek(h).map(|&server| Match {
                server,
                blocks: i + 1,
            })
        })
    }

    /// `server` now serves `chain`: every block of it points there.
    pub fn record(&self, chain: &PromptChain, server: u64) {
        let mut blocks = self.lock();
        for h in &chain.0 {
            blocks.put(*h, server);
        }
    }

    /// Forget a server that left the pool.
    pub fn forget(&self, server: u64) {
        let mut blocks = self.lock();
        let gone: Vec<u64> = blocks
            .iter()
            .filter(|(_, s)| **s == server)
            .map(|(h, _)| *h)
            .collect();
        for h in gone {
            blocks.pop(&h);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(turns: &[&str]) -> Vec<u8> {
        let messages: Vec<serde_json::Value> = turns
            .iter()
            .enumerate()
            .map(|(i, t)| {
                serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": t})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"model": "m", "messages": messages})).unwrap()
    }

    fn long(tag: &str) -> String {
        format!("{tag} ").repeat(200)
    }

    #[test]
    fn a_growing_conversation_extends_its_chain() {
        let (a, b, c) = (long("alpha"), long("beta"), long("gamma"));
        let one = PromptChain::of_body(&chat(&[&a]));
        let three = PromptChain::of_body(&chat(&[&a, &b, &c]));
        assert!(one.blocks() >= 4 && three.blocks() > one.blocks());
        assert_eq!(&three.0[..one.blocks()], &one.0[..]);
        // Another conversation shares nothing.
        let other = PromptChain::of_body(&chat(&[&long("delta")]));
        assert_ne!(other.0[0], one.0[0]);
        // Text parts count like strings; non-chat bodies have no chain.
        let parts = serde_json::to_vec(&serde_json::json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": a}]}
        ]}))
        .unwrap();
        assert_eq!(PromptChain::of_body(&parts), one);
        assert_eq!(PromptChain::of_body(b"not json").blocks(), 0);
        assert_eq!(PromptChain::of_text(&"x".repeat(BLOCK - 1)).blocks(), 0);
    }

    #[test]
    fn the_longest_prefix_wins() {
        let store = PrefixStore::new(1000);
        let (a, b) = (long("alpha"), long("beta"));
        let short = PromptChain::of_body(&chat(&[&a]));
        let grown = PromptChain::of_body(&chat(&[&a, &b]));
        assert_eq!(store.longest(&grown), None);
        store.record(&short, 1);
        assert_eq!(
            store.longest(&grown),
            Some(Match {
                server: 1,
                blocks: short.blocks()
            })
        );
        store.record(&grown, 2);
        assert_eq!(store.longest(&grown).map(|m| m.server), Some(2));
        assert_eq!(
            store.longest(&grown).map(|m| m.blocks),
            Some(grown.blocks())
        );
        store.forget(2);
        assert_eq!(store.longest(&grown), None);
    }

    #[test]
    fn least_recently_used_blocks_go_first() {
        let store = PrefixStore::new(8);
        let a = PromptChain::of_text(&long("alpha")[..BLOCK * 4]);
        let b = PromptChain::of_text(&long("beta")[..BLOCK * 4]);
        store.record(&a, 1);
        store.record(&b, 2);
        assert_eq!(store.len(), 8);
        // Serving a again makes it recent; c then pushes b out.
        store.record(&a, 1);
        let c = PromptChain::of_text(&long("gamma")[..BLOCK * 4]);
        store.record(&c, 3);
        assert_eq!(store.len(), 8);
        assert_eq!(store.longest(&b), None);
        assert_eq!(store.longest(&a).map(|m| m.blocks), Some(4));
        assert_eq!(store.longest(&c).map(|m| m.server), Some(3));
    }
}
