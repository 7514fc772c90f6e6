//! Counting the completion tokens of an answer as it passes, for a client
//! key's token limit and usage metrics: the `usage.completion_tokens` the
//! backend reports (a JSON answer, or the usage chunk of a stream), or else
//! the number of events of a stream (one token each, as model servers
//! stream them).

const USAGE: &[u8] = b"\"completion_tokens\":";
const EVENT: &[u8] = b"data: {";

#[derive(Default)]
pub struct UsageTap {
    /// The end of what came before, for patterns split across chunks.
    tail: Vec<u8>,
    reported: Option<u64>,
    events: u64,
}

impl UsageTap {
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let mut seen = std::mem::take(&mut self.tail);
        let old = seen.len();
        seen.extend_from_slice(chunk);
        // Events that end in the new bytes (so none is counted twice).
        self.events += seen
            .windows(EVENT.len())
            .enumerate()
            .filter(|(i, w)| *w == EVENT && i + EVENT.len() > old)
            .count() as u64;
        let mut from = 0;
        while let Some(at) = find(&seen[from..], USAGE) {
            let digits_at = from + at + USAGE.len();
            let rest = &seen[digits_at..];
            let rest = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
            let digits: Vec<u8> = rest
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            // A number cut by the chunk's end is read whole next time.
            if !digits.is_empty() && digits.len() < rest.len() {
                if let Ok(n) = std::str::from_utf8(&digits).unwrap_or("").parse() {
                    self.reported = Some(n);
                }
            }
            from = digits_at;
        }
        let keep = 48.min(seen.len());
        self.tail = seen[seen.len() - keep..].to_vec();
    }

    /// The completion tokens of the answer so far.
    pub fn tokens(&self) -> u64 {
        self.reported.unwrap_or(self.events)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(chunks: &[&str]) -> u64 {
        let mut t = UsageTap::default();
        for c in chunks {
            t.feed(c.as_bytes());
        }
        t.tokens()
    }

    #[test]
    fn reported_usage_wins() {
        let json = r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":20,"total_tokens":25}}"#;
        assert_eq!(tap(&[json]), 20);
        // Split anywhere, even inside the number.
        for cut in 1..json.len() {
            assert_eq!(tap(&[&json[..cut], &json[cut..]]), 20, "cut at {cut}");
        }
    }

    #[test]
    fn streams_without_usage_count_their_events() {
        let events = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n".repeat(7)
            + "data: [DONE]\n\n";
        assert_eq!(tap(&[&events]), 7);
        let mid = events.len() / 2 + 3;
        assert_eq!(tap(&[&events[..mid], &events[mid..]]), 7);
        let with_usage = events.replace(
            "data: [DONE]",
            "data: {\"choices\":[],\"usage\":{\"completion_tokens\": 9}}\n\ndata: [DONE]",
        );
        assert_eq!(tap(&[&with_usage]), 9);
    }
}
