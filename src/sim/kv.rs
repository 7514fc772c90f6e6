//! The simulated server's KV cache and load, as a model server reports
//! them: prompt prefixes it has processed (an LRU of prompt blocks, the
//! gateway's own block chain), a prefill whose time is proportional to the
//! part of the prompt that was not cached, and vLLM-style `/metrics`
//! (requests running and waiting, KV-cache usage, prefix-cache queries and
//! hits), plus load reported from elsewhere (`/_sim/load`).

use crate::pool::prefix::{render, PrefixStore, PromptChain, BLOCK};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Characters per token, roughly, for English text.
const CHARS_PER_TOKEN: usize = 4;

pub struct KvCache {
    /// Prefill time per prompt token not found in the cache.
    pub per_token: Duration,
    blocks: Option<PrefixStore>,
    capacity: usize,
    /// Prompt tokens looked up, and found cached.
    queries: AtomicU64,
    hits: AtomicU64,
    /// Requests reported as running or waiting on top of this server's own
    /// (traffic from elsewhere).
    extra: Mutex<(u64, u64)>,
}

impl KvCache {
    pub fn new(per_token: Duration, capacity: usize) -> KvCache {
        KvCache {
            per_token,
            blocks: (capacity > 0).then(|| PrefixStore::new(capacity)),
            capacity,
            queries: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            extra: Mutex::new((0, 0)),
        }
    }

    /// Look the prompt of `body` up, remember it, and return how long its
    /// prefill takes. The answer (`answer`, as the next turn's history will
    /// hold it) is cached too, as a model server keeps the KV of what it
    /// generated.
    pub fn prefill(&self, body: &[u8], answer: &str) -> Duration {
        let chain = PromptChain::of_body(body);
        let total = prompt_chars(body) / CHARS_PER_TOKEN;
        let cached = match &self.blocks {
            Some(store) => {
                let hit = store.longest(&chain).map_or(0, |m| m.blocks);
                store.record(&chain, 0);
                if let Some(mut text) = render(body) {
                    text.push_str("assistant\n");
                    text.push_str(answer);
                    text.push('\n');
                    store.record(&PromptChain::of_text(&text), 0);
                }
                (hit * BLOCK / CHARS_PER_TOKEN).min(total)
            }
            None => 0,
        };
        self.queries.fetch_add(total as u64, Ordering::Relaxed);
        self.hits.fetch_add(cached as u64, Ordering::Relaxed);
        self.per_token * u32::try_from(total - cached).unwrap_or(u32::MAX)
    }

    /// Set the load reported on top of this server's own.
    pub fn set_extra(&self, running: u64, waiting: u64) {
        *self.extra.lock().unwrap_or_else(|p| p.into_inner()) = (running, waiting);
    }

    /// `/metrics` in vLLM's names, given the requests in flight here.
    pub fn metrics(&self, model: &str, in_flight: u64) -> String {
        let (running, waiting) = *self.extra.lock().unwrap_or_else(|p| p.into_inner());
        let used = self.blocks.as_ref().map_or(0, PrefixStore::len);
        let usage = if self.capacity == 0 {
            0.0
        } else {
            used as f64 / self.capacity as f64
        };
        let m = format!("{{model_name=\"{model}\"}}");
        format!(
            "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{m} {}\n\
             # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{m} {waiting}\n\
             # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{m} {usage}\n\
             # TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{m} {}\n\
             # TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{m} {}\n",
            in_flight + running,
            self.queries.load(Ordering::Relaxed),
            self.hits.load(Ordering::Relaxed),
        )
    }
}

/// Characters of the prompt the model reads (what the chain covers).
fn prompt_chars(body: &[u8]) -> usize {
    fn text(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::String(s) => s.chars().count(),
            serde_json::Value::Array(a) => a.iter().map(text).sum(),
            serde_json::Value::Object(o) => o.get("text").map_or(0, text),
            _ => 0,
        }
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    match v["messages"].as_array() {
        Some(messages) => messages
            .iter()
            .map(|m| m["role"].as_str().map_or(0, str::len) + 2 + text(&m["content"]))
            .sum(),
        None => text(&v["prompt"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(words: &[&str]) -> Vec<u8> {
        let messages: Vec<_> = words
            .iter()
            .map(|w| serde_json::json!({"role": "user", "content": w.repeat(100)}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"messages": messages})).unwrap()
    }

    #[test]
    fn a_cached_prefix_is_not_prefilled_again() {
        let kv = KvCache::new(Duration::from_micros(100), 1000);
        let first = kv.prefill(&chat(&["alpha "]), "");
        // 600 characters of content: about 150 tokens, all new.
        assert!(first >= Duration::from_millis(15), "{first:?}");
        let again = kv.prefill(&chat(&["alpha ", "beta "]), "");
        let cold =
            KvCache::new(Duration::from_micros(100), 1000).prefill(&chat(&["alpha ", "beta "]), "");
        assert!(
            again < cold / 2 + Duration::from_millis(2),
            "{again:?} vs {cold:?}"
        );
        let text = kv.metrics("m", 2);
        assert!(
            text.contains("vllm:num_requests_running{model_name=\"m\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("vllm:prefix_cache_hits_total{model_name=\"m\"} "),
            "{text}"
        );
        // No cache: everything is prefilled every time.
        let none = KvCache::new(Duration::from_micros(100), 0);
        assert_eq!(
            none.prefill(&chat(&["alpha "]), ""),
            none.prefill(&chat(&["alpha "]), "")
        );
    }

    #[test]
    fn what_it_answered_is_cached_for_the_next_turn() {
        let kv = KvCache::new(Duration::from_micros(100), 1000);
        let question = "q ".repeat(300);
        let answer = "tok ".repeat(200);
        let turn1 = serde_json::json!({"messages": [{"role": "user", "content": question}]});
        let turn2 = serde_json::json!({"messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "and then?"},
        ]});
        kv.prefill(&serde_json::to_vec(&turn1).unwrap(), &answer);
        // Only the new question (and the last partial block) is prefilled.
        let second = kv.prefill(&serde_json::to_vec(&turn2).unwrap(), "");
        assert!(second <= Duration::from_micros(100) * 40, "{second:?}");
    }

    #[test]
    fn load_from_elsewhere_shows() {
        let kv = KvCache::new(Duration::ZERO, 0);
        kv.set_extra(3, 40);
        let text = kv.metrics("m", 1);
        assert!(
            text.contains("vllm:num_requests_running{model_name=\"m\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("vllm:num_requests_waiting{model_name=\"m\"} 40"),
            "{text}"
        );
    }
}
