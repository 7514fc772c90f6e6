use super::*;
use serde_json::json;
use Endpoint::{ChatCompletions as Chat, Completions, Embeddings};

const CHAT: &str = r#"{"model":"llama-3","messages":[{"role":"user","content":"hi"}]}"#;

fn off() -> Normalise {
    Normalise::default()
}

fn limit(n: u64) -> Normalise {
    Normalise {
        max_tokens_limit: Some(n),
        include_usage: false,
    }
}

fn usage() -> Normalise {
    Normalise {
        max_tokens_limit: None,
        include_usage: true,
    }
}

fn ok(endpoint: Endpoint, body: &str, rules: &Normalise) -> Inspected {
    inspect(endpoint, body.as_bytes(), rules)
        .unwrap_or_else(|e| panic!("{} rejected: {}", validate::clip(body, 200), e.message))
}

fn err(endpoint: Endpoint, body: &str) -> InvalidRequest {
    match inspect(endpoint, body.as_bytes(), &off()) {
        Ok(_) => panic!("{} accepted", validate::clip(body, 200)),
        Err(e) => e,
    }
}

/// `CHAT` with `extra` (a JSON object's members) merged in.
fn chat(extra: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(CHAT).unwrap();
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

fn rewritten(i: &Inspected) -> &str {
    std::str::from_utf8(i.rewritten.as_deref().expect("rewritten")).unwrap()
}

#[test]
fn from_path() {
    for (path, want) in [
        ("/v1/chat/completions", Some(Chat)),
        ("/openai/v1/chat/completions", Some(Chat)),
        ("/v1/chat/completions?api-version=1", Some(Chat)),
        // Spellings a lenient backend may still serve as the endpoint.
        ("/v1/chat/completions/", Some(Chat)),
        ("/V1/Chat/Completions", Some(Chat)),
        ("/v1/chat/completions;x=1", Some(Chat)),
        ("/v1/chat;a/completions", Some(Chat)),
        ("/v1/chat-completions", None),
        ("/v1/completions", Some(Completions)),
        ("/v1/embeddings", Some(Embeddings)),
        ("/v1/models", None),
        ("/", None),
        ("", None),
    ] {
        assert_eq!(Endpoint::from_path(path), want, "{path}");
    }
}

#[test]
fn valid_chat_passes_unchanged() {
    let bodies = [
        CHAT.to_owned(),
        // Every optional field at a legal value, unknown extensions, parts.
        json!({
            "model": "m", "stream": true, "max_tokens": 1, "max_completion_tokens": 0,
            "temperature": 2, "top_p": 0.5, "n": 128, "stop": ["a", "b", "c", "d"],
            "presence_penalty": -2, "frequency_penalty": 2.0,
            "stream_options": {"include_usage": false}, "seed": -5, "user": "u",
            "logprobs": true, "top_logprobs": 20, "top_k": 40, "repetition_penalty": 1.1,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:..."}}]},
                {"role": "assistant", "content": null,
                 "tool_calls": [{"id": "c1", "type": "function",
                                 "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "some-backend-role", "content": []},
                {"role": "assistant", "tool_calls": null},
            ],
        })
        .to_string(),
        // Nulls mean "not given"; whole floats count as integers.
        chat(json!({"stream": null, "max_tokens": 100.0, "temperature": null, "stop": null})),
        chat(json!({"stop": "\n", "n": 1, "seed": 18446744073709551615u64})),
        // Pretty-printed.
        "{\n  \"model\": \"m\",\n  \"messages\": [ { \"role\": \"user\", \"content\": \"x\" } ]\n}\n"
            .to_owned(),
    ];
    for body in &bodies {
        let i = ok(Chat, body, &off());
        assert_eq!(i.rewritten, None);
        assert!(i.applied.is_empty());
        assert_eq!(i.endpoint, Chat);
    }
    let i = ok(Chat, &bodies[1], &off());
    assert_eq!((i.model.as_str(), i.stream), ("m", true));
    let i = ok(Chat, CHAT, &off());
    assert_eq!((i.model.as_str(), i.stream), ("llama-3", false));
}

#[test]
fn valid_completions_and_embeddings_pass_unchanged() {
    for prompt in [
        json!("once upon a time"),
        json!(""),
        json!(["a", "b"]),
        json!([1, 2, 3]),
        json!([[1, 2], [3]]),
        json!([[]]),
    ] {
        let body = json!({"model": "m", "prompt": prompt, "logprobs": 5, "echo": true,
                          "best_of": 2, "suffix": "x", "stream": false});
        let i = ok(Completions, &body.to_string(), &off());
        assert_eq!(
            (i.rewritten, i.model.as_str(), i.stream),
            (None, "m", false)
        );
    }
    for input in [
        json!("hello"),
        json!(["a", "b"]),
        json!([1, 2, 3]),
        json!([[1, 2], [3]]),
    ] {
        let body = json!({"model": "e5", "input": input, "encoding_format": "float",
                          "dimensions": 256, "user": "u"});
        let i = ok(Embeddings, &body.to_string(), &off());
        assert_eq!(
            (i.rewritten, i.model.as_str(), i.stream),
            (None, "e5", false)
        );
    }
    // Embeddings never stream; generation fields are not theirs to check.
    let body = r#"{"model":"e","input":"x","stream":true,"temperature":9}"#;
    let i = ok(Embeddings, body, &usage());
    assert_eq!((i.stream, i.rewritten), (false, None));
}

#[test]
fn invalid_requests_name_the_field() {
    let cases: Vec<(Endpoint, String, &str)> = vec![
        (
            Chat,
            r#"{"messages":[{"role":"user","content":"x"}]}"#.into(),
            "model",
        ),
        (Chat, chat(json!({"model": ""})), "model"),
        (Chat, chat(json!({"model": 7})), "model"),
        (Chat, chat(json!({"model": null})), "model"),
        (Chat, r#"{"model":"m"}"#.into(), "messages"),
        (Chat, chat(json!({"messages": []})), "messages"),
        (
            Chat,
            chat(json!({"messages": {"role": "user"}})),
            "messages",
        ),
        (Chat, chat(json!({"messages": ["hi"]})), "messages[0]"),
        (
            Chat,
            chat(json!({"messages": [{"content": "x"}]})),
            "messages[0].role",
        ),
        (
            Chat,
            chat(json!({"messages": [{"role": ""}]})),
            "messages[0].role",
        ),
        (
            Chat,
            chat(json!({"messages": [{"role": 1}]})),
            "messages[0].role",
        ),
        (
            Chat,
            chat(
                json!({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": 5}]}),
            ),
            "messages[1].content",
        ),
        (
            Chat,
            chat(json!({"messages": [{"role": "user", "content": {"type": "text"}}]})),
            "messages[0].content",
        ),
        (
            Chat,
            chat(json!({"messages": [{"role": "user", "content": ["x"]}]})),
            "messages[0].content[0]",
        ),
        (
            Chat,
            chat(json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]})),
            "messages[0].content[0].type",
        ),
        (
            Chat,
            chat(json!({"messages": [{"role": "user", "content": [{"type": 3}]}]})),
            "messages[0].content[0].type",
        ),
        (
            Chat,
            chat(json!({"messages": [{"role": "assistant", "tool_calls": {}}]})),
            "messages[0].tool_calls",
        ),
        (Chat, chat(json!({"stream": "true"})), "stream"),
        (Chat, chat(json!({"max_tokens": 0})), "max_tokens"),
        (Chat, chat(json!({"max_tokens": -1})), "max_tokens"),
        (Chat, chat(json!({"max_tokens": 1.5})), "max_tokens"),
        (Chat, chat(json!({"max_tokens": "10"})), "max_tokens"),
        (
            Chat,
            chat(json!({"max_completion_tokens": -1})),
            "max_completion_tokens",
        ),
        (Chat, chat(json!({"temperature": 2.01})), "temperature"),
        (Chat, chat(json!({"temperature": -0.1})), "temperature"),
        (Chat, chat(json!({"temperature": "hot"})), "temperature"),
        (Chat, chat(json!({"top_p": 1.5})), "top_p"),
        (Chat, chat(json!({"n": 0})), "n"),
        (Chat, chat(json!({"n": 129})), "n"),
        (
            Chat,
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            "stop",
        ),
        (Chat, chat(json!({"stop": 1})), "stop"),
        (Chat, chat(json!({"stop": ["a", 1]})), "stop[1]"),
        (
            Chat,
            chat(json!({"presence_penalty": 2.5})),
            "presence_penalty",
        ),
        (
            Chat,
            chat(json!({"frequency_penalty": -3})),
            "frequency_penalty",
        ),
        (
            Chat,
            chat(json!({"stream_options": true})),
            "stream_options",
        ),
        (
            Chat,
            chat(json!({"stream": true, "stream_options": {"include_usage": "yes"}})),
            "stream_options.include_usage",
        ),
        (Chat, chat(json!({"seed": 1.5})), "seed"),
        (Chat, chat(json!({"user": 5})), "user"),
        (Chat, chat(json!({"logprobs": 1})), "logprobs"),
        (Chat, chat(json!({"top_logprobs": 21})), "top_logprobs"),
        (Chat, chat(json!({"top_logprobs": -1})), "top_logprobs"),
        (Completions, r#"{"model":"m"}"#.into(), "prompt"),
        (
            Completions,
            r#"{"model":"m","prompt":null}"#.into(),
            "prompt",
        ),
        (Completions, r#"{"model":"m","prompt":5}"#.into(), "prompt"),
        (Completions, r#"{"model":"m","prompt":[]}"#.into(), "prompt"),
        (
            Completions,
            r#"{"model":"m","prompt":[true]}"#.into(),
            "prompt",
        ),
        (
            Completions,
            r#"{"model":"m","prompt":["a",1]}"#.into(),
            "prompt[1]",
        ),
        (
            Completions,
            r#"{"model":"m","prompt":[1,"a"]}"#.into(),
            "prompt[1]",
        ),
        (
            Completions,
            r#"{"model":"m","prompt":[1,-2]}"#.into(),
            "prompt[1]",
        ),
        (
            Completions,
            r#"{"model":"m","prompt":[1,2.5]}"#.into(),
            "prompt[1]",
        ),
        (
            Completions,
            r#"{"model":"m","prompt":[[1],2]}"#.into(),
            "prompt[1]",
        ),
        (
            Completions,
            r#"{"model":"m","prompt":[[1],[2,"x"]]}"#.into(),
            "prompt[1][1]",
        ),
        (
            Completions,
            r#"{"model":"m","prompt":"x","logprobs":true}"#.into(),
            "logprobs",
        ),
        (
            Completions,
            r#"{"model":"m","prompt":"x","max_tokens":0}"#.into(),
            "max_tokens",
        ),
        (
            Completions,
            r#"{"model":"m","prompt":"x","temperature":3}"#.into(),
            "temperature",
        ),
        (Embeddings, r#"{"model":"m"}"#.into(), "input"),
        (Embeddings, r#"{"model":"m","input":""}"#.into(), "input"),
        (Embeddings, r#"{"model":"m","input":[]}"#.into(), "input"),
        (Embeddings, r#"{"model":"m","input":{}}"#.into(), "input"),
        (
            Embeddings,
            r#"{"model":"m","input":["a",""]}"#.into(),
            "input[1]",
        ),
        (
            Embeddings,
            r#"{"model":"m","input":[[1],[]]}"#.into(),
            "input[1]",
        ),
        (
            Embeddings,
            r#"{"model":"m","input":[[1],[-1]]}"#.into(),
            "input[1][0]",
        ),
        (Embeddings, r#"{"model":"","input":"x"}"#.into(), "model"),
        (
            Embeddings,
            r#"{"model":"m","input":"x","user":[]}"#.into(),
            "user",
        ),
    ];
    for (endpoint, body, param) in &cases {
        let e = err(*endpoint, body);
        assert_eq!(e.param.as_deref(), Some(*param), "{body}: {}", e.message);
        assert!(
            e.message.starts_with(&format!("'{param}' must be")),
            "{body}: {}",
            e.message
        );
    }
}

#[test]
fn messages_say_what_was_expected() {
    let e = err(Chat, &chat(json!({"messages": []})));
    assert_eq!(
        e.message,
        "'messages' must be a non-empty array, got an array"
    );
    let e = err(Chat, r#"{"model":"m"}"#);
    assert_eq!(
        e.message,
        "'messages' must be a non-empty array (it is missing)"
    );
    let e = err(Chat, &chat(json!({"temperature": 3.5})));
    assert_eq!(
        e.message,
        "'temperature' must be a number between 0 and 2, got 3.5"
    );
    let e = err(Chat, &chat(json!({"n": 0})));
    assert_eq!(e.message, "'n' must be an integer between 1 and 128, got 0");
}

#[test]
fn messages_never_echo_much_client_data() {
    let long = "x".repeat(10_000);
    for body in [
        chat(json!({"model": 1e300})),
        chat(json!({"temperature": 123456789012345678901234567890.5})),
        chat(json!({"temperature": long})),
        chat(json!({"messages": [{"role": "user", "content": 5, "name": long}]})),
        chat(json!({"messages": [{"role": "user", "content": {"x": long}}]})),
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{long}"#),
        format!("{{\"{long}\" 1}}"),
        format!("[{}", "1,".repeat(5000)),
    ] {
        let e = err(Chat, &body);
        assert!(e.message.len() <= 300, "{}", e.message);
        assert!(!e.message.contains("xxxx"), "{}", e.message);
    }
}

#[test]
fn malformed_json() {
    for body in ["", "{", r#"{"model":"m",}"#, "{'model':'m'}", "{} x", "nul"] {
        let e = err(Chat, body);
        assert_eq!(e.param, None);
        assert!(
            e.message.starts_with("request body is not valid JSON: "),
            "{}",
            e.message
        );
        assert!(e.message.contains(" at line 1 column "), "{}", e.message);
    }
    let e = err(Chat, "{\n  \"model\": \"m\",\n  oops\n}");
    assert!(e.message.ends_with("at line 3 column 3"), "{}", e.message);

    let e = inspect(Chat, b"{\"model\":\"\xff\xfe\"}", &off()).unwrap_err();
    assert_eq!(e.param, None);
    assert!(e.message.contains("UTF-8"), "{}", e.message);
}

#[test]
fn body_must_be_an_object() {
    for (body, got) in [
        ("[1]", "an array"),
        (r#""x""#, "a string"),
        ("null", "null"),
        ("42", "42"),
    ] {
        let e = err(Chat, body);
        assert_eq!(e.param, None);
        assert_eq!(
            e.message,
            format!("request body must be a JSON object, got {got}")
        );
    }
}

#[test]
fn huge_nesting_is_an_error_not_a_stack_overflow() {
    let deep = 1_000_000;
    for body in [
        "[".repeat(deep),
        format!("{}{}", "[".repeat(deep), "]".repeat(deep)),
        format!(r#"{{"model":"m","messages":{}"#, "[".repeat(deep)),
        format!(
            r#"{{"model":"m","x":{}1{}"#,
            r#"{"a":"#.repeat(deep),
            "}".repeat(deep)
        ),
    ] {
        for endpoint in [Chat, Completions, Embeddings] {
            let e = inspect(endpoint, body.as_bytes(), &usage()).unwrap_err();
            assert_eq!(e.param, None);
            assert!(e.message.contains("recursion limit"), "{}", e.message);
        }
    }
    // Nesting under the limit is fine and passes through.
    let ok_depth = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"ext":{}{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let i = ok(Chat, &ok_depth, &limit(5));
    assert_eq!(i.rewritten, None);
}

#[test]
fn clamp_lowers_only_too_large_values() {
    let body = r#"{"model":"m","max_tokens":100000,"messages":[{"role":"user","content":"hi"}],"temperature":0.7}"#;
    let i = ok(Chat, body, &limit(8192));
    assert_eq!(i.applied, ["max_tokens 100000 -> 8192"]);
    assert_eq!(
        rewritten(&i),
        r#"{"model":"m","max_tokens":8192,"messages":[{"role":"user","content":"hi"}],"temperature":0.7}"#
    );

    let both = chat(json!({"max_tokens": 9000, "max_completion_tokens": 10000}));
    let i = ok(Chat, &both, &limit(8192));
    assert_eq!(
        i.applied,
        [
            "max_tokens 9000 -> 8192",
            "max_completion_tokens 10000 -> 8192"
        ]
    );
    let v: serde_json::Value = serde_json::from_slice(i.rewritten.as_deref().unwrap()).unwrap();
    assert_eq!(
        (
            v["max_tokens"].as_u64(),
            v["max_completion_tokens"].as_u64()
        ),
        (Some(8192), Some(8192))
    );

    // At or under the limit, absent, null: untouched, nothing added.
    for body in [
        chat(json!({"max_tokens": 8192})),
        chat(json!({"max_tokens": 1, "max_completion_tokens": 0})),
        chat(json!({"max_tokens": null})),
        CHAT.to_owned(),
    ] {
        let i = ok(Chat, &body, &limit(8192));
        assert_eq!((i.rewritten, i.applied.len()), (None, 0), "{body}");
    }
    // Legacy completions too, whole floats too; never embeddings.
    let i = ok(
        Completions,
        r#"{"model":"m","prompt":"x","max_tokens":1e5}"#,
        &limit(64),
    );
    assert_eq!(
        rewritten(&i),
        r#"{"model":"m","prompt":"x","max_tokens":64}"#
    );
    assert_eq!(i.applied, ["max_tokens 100000.0 -> 64"]);
    let i = ok(
        Embeddings,
        r#"{"model":"m","input":"x","max_tokens":100}"#,
        &limit(64),
    );
    assert_eq!(i.rewritten, None);
}

#[test]
fn include_usage_only_for_streams_that_do_not_say() {
    let body = r#"{"model":"llama-3","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let i = ok(Chat, body, &usage());
    assert_eq!(i.applied, ["stream_options.include_usage -> true (added)"]);
    assert_eq!(
        rewritten(&i),
        r#"{"model":"llama-3","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#
    );
    for (options, want) in [
        (r#"{}"#, r#"{"include_usage":true}"#),
        (r#"{ }"#, r#"{"include_usage":true}"#),
        (r#"null"#, r#"{"include_usage":true}"#),
        (r#"{"x": 1 }"#, r#"{"x": 1,"include_usage":true }"#),
        (
            r#"{"include_usage":null,"x":1}"#,
            r#"{"include_usage":true,"x":1}"#,
        ),
    ] {
        let body =
            format!(r#"{{"stream_options":{options},"model":"m","stream":true,"prompt":"p"}}"#);
        let i = ok(Completions, &body, &usage());
        assert_eq!(
            rewritten(&i),
            format!(r#"{{"stream_options":{want},"model":"m","stream":true,"prompt":"p"}}"#)
        );
    }
    // A client that said (either way), or does not stream: left alone.
    for body in [
        chat(json!({"stream": true, "stream_options": {"include_usage": false}})),
        chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
        chat(json!({"stream": false})),
        chat(json!({"stream": null})),
        chat(json!({"stream_options": {}})),
        CHAT.to_owned(),
    ] {
        let i = ok(Chat, &body, &usage());
        assert_eq!((i.rewritten, i.applied.len()), (None, 0), "{body}");
    }
}

#[test]
fn rewritten_bodies_keep_everything_else() {
    // Order, whitespace, number spellings, escapes, unknown fields.
    let body = "{ \"temperature\" : 1.0E0 ,\n \"model\":\"caf\\u00e9\", \"stream\" : true,\n \
                \"messages\":[{\"role\":\"user\",\"content\":\"a\\\"}{b\"}],\n \
                \"max_tokens\" : 100000 , \"x_big\": 123456789012345678901234567890,\n \
                \"top_k\": 40 }\n";
    let rules = Normalise {
        max_tokens_limit: Some(100),
        include_usage: true,
    };
    let i = ok(Chat, body, &rules);
    assert_eq!((i.model.as_str(), i.stream), ("café", true));
    let want = body.replace("100000", "100").replace(
        "\"top_k\": 40",
        "\"top_k\": 40,\"stream_options\":{\"include_usage\":true}",
    );
    assert_eq!(rewritten(&i), want);

    let mut before: serde_json::Value = serde_json::from_str(body).unwrap();
    let after: serde_json::Value = serde_json::from_str(rewritten(&i)).unwrap();
    before["max_tokens"] = json!(100);
    before["stream_options"] = json!({"include_usage": true});
    assert_eq!(before, after);
    // And the result is a fixed point.
    assert_eq!(ok(Chat, rewritten(&i), &rules).rewritten, None);
}

#[test]
fn rewrites_follow_escaped_and_duplicate_keys() {
    // serde_json (and Python) keep the last of duplicate keys.
    let body = r#"{"model":"m","prompt":"p","max_tokens":5,"max\u005ftokens":500,"stream":true,"stream_options":{"include_usage":false},"stream_options":{"a":1}}"#;
    let i = ok(
        Completions,
        body,
        &Normalise {
            max_tokens_limit: Some(50),
            include_usage: true,
        },
    );
    assert_eq!(
        rewritten(&i),
        r#"{"model":"m","prompt":"p","max_tokens":5,"max\u005ftokens":50,"stream":true,"stream_options":{"include_usage":false},"stream_options":{"a":1,"include_usage":true}}"#
    );
    assert!(!i.applied.iter().any(|a| a == RESERIALISED));
}

#[test]
fn peek_model_reads_only_a_string_model() {
    assert_eq!(peek_model(CHAT.as_bytes()).as_deref(), Some("llama-3"));
    assert_eq!(
        peek_model(br#"{"x":[1,{"y":2}],"model":"a\"b"}"#).as_deref(),
        Some("a\"b")
    );
    for body in [
        &br#"{"model":5}"#[..],
        br#"{"model":null}"#,
        br#"{"messages":[]}"#,
        br#"["model"]"#,
        b"not json",
        b"",
        br#"{"model":"m""#,
        br#"{"model":"m"} x"#,
        br#"{"model":"m","model":1}"#,
    ] {
        assert_eq!(peek_model(body), None, "{}", String::from_utf8_lossy(body));
    }
    assert_eq!(peek_model("[".repeat(100_000).as_bytes()), None);
    // Escaped key; the last of duplicates, as `inspect` reads it.
    assert_eq!(
        peek_model(br#"{"mod\u0065l":"a","x":{"model":"b"}}"#).as_deref(),
        Some("a")
    );
    assert_eq!(
        peek_model(br#"{"model":"a","model":"b"}"#).as_deref(),
        Some("b")
    );
}

#[test]
fn error_body_is_openai_shape() {
    let e = err(Chat, r#"{"model":"m","messages":[]}"#);
    assert_eq!(
        e.body(),
        r#"{"error":{"message":"'messages' must be a non-empty array, got an array","type":"invalid_request_error","param":"messages","code":null}}"#
    );
    let e = err(Chat, "[]");
    let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
    assert_eq!(v["error"]["param"], serde_json::Value::Null);
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

/// A cheap stand-in for the fuzzer: mutations of valid bodies.
#[test]
fn fuzz_inspect_survives_mutations() {
    let seeds = [
        CHAT.to_owned(),
        chat(json!({"stream": true, "max_tokens": 99999, "stream_options": {"x": 1}})),
        r#"{"model":"m","prompt":[[1,2],[3]],"max_tokens":100,"stream":true,"stream_options":null}"#
            .to_owned(),
        r#"{"model":"m","input":["a","b"]}"#.to_owned(),
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"{}[]\":,\\ 0123456789-.eEtrufalsn\nabxyz";
    for seed in &seeds {
        fuzz_inspect(seed.as_bytes());
        for _ in 0..500 {
            let mut data = seed.clone().into_bytes();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % (data.len() + 1);
                let c = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 if at < data.len() => data[at] = c,
                    1 if at < data.len() => {
                        data.remove(at);
                    }
                    _ => data.insert(at, c),
                }
            }
            fuzz_inspect(&data);
        }
    }
}
