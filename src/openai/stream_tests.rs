use super::*;
use serde_json::json;

fn event(v: Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

fn delta(id: &str, content: &str, finish: Option<&str>) -> Vec<u8> {
    event(
        json!({"id": id, "object": "chat.completion.chunk", "created": 100, "model": "a",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}),
    )
}

fn pieces(chunks: &[&[u8]]) -> Vec<Piece> {
    let mut e = Events::default();
    let mut out = Vec::new();
    for c in chunks {
        e.push(c, &mut out);
    }
    if let Some(rest) = e.rest() {
        out.push(Piece::Raw(rest));
    }
    out
}

#[test]
fn events_are_cut_whole_wherever_the_chunks_split() {
    let text = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n";
    let whole = pieces(&[text]);
    assert_eq!(whole.len(), 4);
    assert_eq!(
        whole[1],
        Piece::Event(Bytes::from_static(b"data: {\"b\":2}\r\n\r\n"))
    );
    for cut in 1..text.len() {
        assert_eq!(pieces(&[&text[..cut], &text[cut..]]), whole, "cut at {cut}");
    }
    let bytewise: Vec<&[u8]> = text.chunks(1).collect();
    assert_eq!(pieces(&bytewise), whole);
    // A last event without its blank line is left over, not lost.
    assert_eq!(
        pieces(&[b"data: {}\n\ndata: [DONE]"]),
        vec![
            Piece::Event(Bytes::from_static(b"data: {}\n\n")),
            Piece::Raw(Bytes::from_static(b"data: [DONE]"))
        ]
    );
}

#[test]
fn an_endless_event_is_passed_on_raw() {
    let mut e = Events::default();
    let mut out = Vec::new();
    e.push(&vec![b'x'; MAX_EVENT + 1], &mut out);
    assert!(matches!(&out[..], [Piece::Raw(b)] if b.len() == MAX_EVENT + 1));
    assert!(e.rest().is_none());
}

#[test]
fn data_lines_are_joined() {
    assert_eq!(
        data_of(b"event: x\ndata: a\ndata:b\n\n").as_deref(),
        Some("a\nb")
    );
    assert_eq!(data_of(b": comment\n\n"), None);
}

#[test]
fn the_text_sent_and_the_ending_are_kept() {
    let mut s = StreamState::default();
    let role = event(json!({"id": "c1", "created": 100, "model": "a",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}));
    assert_eq!(s.read(&role), Meaning::Forward);
    s.read(&delta("c1", "Hel", None));
    s.read(&delta("c1", "lo", None));
    assert_eq!(s.text(), "Hello");
    assert_eq!(s.tokens(), 2);
    assert!(!s.finished());
    assert_eq!(s.resumable(), Ok(()));
    s.read(&delta("c1", "", Some("stop")));
    assert!(s.finished());
    assert_eq!(s.resumable(), Err(Unsafe::Finished));
    assert!(!s.done());
    assert_eq!(s.read(b"data: [DONE]\n\n"), Meaning::Done);
    assert!(s.done());
}

#[test]
fn what_makes_a_resume_unsafe() {
    let mut s = StreamState::default();
    s.read(&event(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a"}}]}}]})));
    assert_eq!(s.resumable(), Err(Unsafe::ToolCall));

    let mut s = StreamState::default();
    s.read(&event(
        json!({"choices": [{"index": 1, "delta": {"content": "x"}}]}),
    ));
    assert_eq!(s.resumable(), Err(Unsafe::MultiChoice));

    let mut s = StreamState::default();
    s.read(&event(
        json!({"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]}),
    ));
    assert_eq!(s.resumable(), Err(Unsafe::Reasoning));
    // Once the answer itself has begun, the reasoning is behind it.
    s.read(&delta("c", "Yes", None));
    assert_eq!(s.resumable(), Ok(()));

    let mut s = StreamState::default();
    s.read(b"data: {not json\n\n");
    assert_eq!(s.resumable(), Err(Unsafe::Unreadable));

    let mut s = StreamState::default();
    let two = event(json!({"choices": [
        {"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"},
        {"index": 1, "delta": {"content": "b"}, "finish_reason": null}]}));
    s.read(&two);
    assert!(!s.finished(), "one choice is still open");
}

#[test]
fn an_error_event_is_a_failure() {
    let mut s = StreamState::default();
    let err = event(json!({"error": {"message": "engine died", "type": "server_error"}}));
    assert_eq!(s.read(&err), Meaning::Error);
    assert_eq!(s.continued(&err).0, Meaning::Error);
}

#[test]
fn a_continuation_speaks_as_the_original_stream() {
    let mut s = StreamState::default();
    s.read(&delta("orig", "tok0 ", None));
    s.read(&delta("orig", "tok1 ", None));
    s.begin_continuation();

    // The continuation's opening role says nothing new: left out.
    let role = event(json!({"id": "other", "created": 999, "model": "b",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}));
    assert_eq!(s.continued(&role), (Meaning::Drop, None));
    // So is reasoning the client did not see the first time.
    let thinking = event(
        json!({"id": "other", "choices": [{"index": 0, "delta": {"reasoning_content": "so"}}]}),
    );
    assert_eq!(s.continued(&thinking).0, Meaning::Drop);

    let (m, out) = s.continued(
        br#"data: {"id":"other","object":"chat.completion.chunk","created":999,"model":"b","system_fingerprint":"x","choices":[{"index":0,"delta":{"content":"tok2 "},"finish_reason":null}]}

"#,
    );
    assert_eq!(m, Meaning::Forward);
    let out = out.unwrap();
    let v: Value = serde_json::from_str(&data_of(&out).unwrap()).unwrap();
    assert_eq!(v["id"], "orig");
    assert_eq!(v["created"], 100);
    assert_eq!(v["model"], "a");
    assert_eq!(v["system_fingerprint"], "x");
    assert!(out.ends_with(b"}\n\n"));
    // Field order is the continuation's own.
    assert!(String::from_utf8_lossy(&out).starts_with("data: {\"id\":\"orig\",\"object\""));
    assert_eq!(s.text(), "tok0 tok1 tok2 ");
    assert_eq!(s.tokens(), 3);

    // Usage is the whole answer's: the two tokens sent before the seam
    // were prompt to the continuation's server.
    let usage = event(
        json!({"id": "other", "created": 999, "model": "b", "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}),
    );
    let (_, out) = s.continued(&usage);
    let v: Value = serde_json::from_str(&data_of(&out.unwrap()).unwrap()).unwrap();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13})
    );
    assert_eq!(v["id"], "orig");

    // A continuation that repeats the role alongside its text loses the role.
    let (_, out) = s.continued(&event(json!({"id": "other", "created": 999, "model": "b",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "tok3 "}, "finish_reason": null}]})));
    let v: Value = serde_json::from_str(&data_of(&out.unwrap()).unwrap()).unwrap();
    assert_eq!(v["id"], "orig");
    assert_eq!(v["choices"][0]["delta"], json!({"content": "tok3 "}));

    let (m, out) = s.continued(b"data: [DONE]\n\n");
    assert_eq!(m, Meaning::Done);
    assert_eq!(out.unwrap(), Bytes::from_static(b"data: [DONE]\n\n"));
}

#[test]
fn usage_never_goes_below_zero() {
    let u = whole_usage(
        &json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
        5,
    );
    assert_eq!(
        u,
        json!({"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3})
    );
    let odd = json!({"completion_tokens": 2});
    assert_eq!(whole_usage(&odd, 5), odd);
}

#[test]
fn reading_only_the_end_judges_a_stream_as_a_full_read_does() {
    let tricky = [
        delta("c", "hi", None),
        // The key spelled with spaces, and text that quotes it (escaped).
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\" :  null}]}\n\n"
            .to_vec(),
        delta("c", "\"finish_reason\":\"stop\"", None),
        // A content that is the key's name itself: parsed, still not an end.
        delta("c", "finish_reason", None),
        event(json!({"choices": [], "usage": {"prompt_tokens": 1}})),
        b": keep-alive\n\n".to_vec(),
    ];
    let endings = [
        delta("c", "", Some("stop")),
        b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\t \"length\"}]}\n\n"
            .to_vec(),
    ];
    for ending in &endings {
        let (mut full, mut light) = (StreamState::default(), StreamState::ends_only());
        for e in &tricky {
            assert_eq!(light.read(e), full.read(e));
            assert!(!light.finished() && !full.finished());
        }
        assert_eq!(light.read(ending), full.read(ending));
        assert!(light.finished() && full.finished());
        let done = b"data: [DONE]\n\n";
        assert_eq!(
            (light.read(done), full.read(done)),
            (Meaning::Done, Meaning::Done)
        );
        assert!(light.done());
    }
    // An error event is still seen for what it is.
    let err = event(json!({"error": {"message": "overloaded"}}));
    assert_eq!(StreamState::ends_only().read(&err), Meaning::Error);
}

#[test]
fn only_events_that_may_end_a_stream_are_parsed() {
    assert!(cannot_end(&delta("c", "hello", None)));
    assert!(cannot_end(b": keep-alive\n\n"));
    assert!(!cannot_end(&delta("c", "", Some("stop"))));
    assert!(!cannot_end(b"data: [DONE]\n\n"));
    assert!(!cannot_end(&event(json!({"error": {"message": "x"}}))));
    assert!(!cannot_end(&delta("c", "finish_reason", None)));
    assert!(!cannot_end(b"data: {\"finish_reason\"}\n\n"));
    assert!(!cannot_end(b"data: {\"finish_reason\":\"null\"}\n\n"));
    // Data on two lines is read whole, whatever a line end splits.
    assert!(!cannot_end(
        b"data: {\"finish_\ndata: reason\":\"stop\"}\n\n"
    ));
    assert!(cannot_end(b"data: {\"a\":1}\r\n\r\n"));
}
