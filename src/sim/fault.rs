//! Fault model of the simulated backend: what goes wrong, for how long, and
//! how it is written in JSON (`/_sim/fault`) and on the command line.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the server does to a traffic request instead of (or while) answering it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer normally.
    #[default]
    None,
    /// Answer with this status, an OpenAI-shaped error body and, when set, a
    /// `Retry-After` header carrying `retry_after` verbatim.
    Status {
        code: u16,
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// Read the request, never answer; keep the socket until the client closes.
    Hang,
    /// Read the request, then close with `SO_LINGER` 0 (the client sees a reset).
    Reset,
    /// Stream `after_tokens` tokens, then close without the final chunk or
    /// `[DONE]`. A non-streamed response is cut half-way through its body.
    CloseMidStream { after_tokens: u32 },
    /// Stream `after_tokens` tokens, then go silent with the socket open. A
    /// non-streamed response stalls half-way through its body.
    StallMidStream { after_tokens: u32 },
    /// Stream every token and end the body cleanly, but leave out
    /// `data: [DONE]` (a backend that lost the end of an answer).
    EndWithoutDone,
    /// Stream `after_tokens` tokens, then end the body cleanly with
    /// neither a `finish_reason` nor `[DONE]`: a truncated answer that
    /// looks whole on the wire. A non-streamed response is cut half-way.
    EndMidStream { after_tokens: u32 },
}

/// A fault plus an optional extra delay before the response head and an
/// optional count of requests it applies to (then it reverts to none).
///
/// JSON: `{"kind":"status","code":429,"retry_after":"2","times":1}`,
/// `{"kind":"none","latency":"200ms"}`. `latency` is a humantime string (a
/// bare number is read as milliseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    #[serde(default, with = "latency_serde")]
    pub latency: Option<Duration>,
    #[serde(default)]
    pub times: Option<u32>,
}

impl Fault {
    /// A fault of this kind, forever, without extra latency.
    pub fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            latency: None,
            times: None,
        }
    }

    /// No fault, only an extra delay before each response head.
    pub fn latency(latency: Duration) -> Fault {
        Fault {
            kind: FaultKind::None,
            latency: Some(latency),
            times: None,
        }
    }

    /// The same fault, applied to the next `n` requests only.
    pub fn times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }

    /// Checks what a client may send to `/_sim/fault`.
    pub fn validate(&self) -> Result<(), String> {
        if let FaultKind::Status { code, retry_after } = &self.kind {
            if !(200..=599).contains(code) {
                return Err(format!("status code {code} is not in 200..=599"));
            }
            if let Some(v) = retry_after {
                if v.bytes().any(|b| b == b'\r' || b == b'\n') {
                    return Err("retry_after must not contain CR or LF".to_string());
                }
            }
        }
        Ok(())
    }
}

/// Health endpoint behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthMode {
    Ok,
    Fail,
    Hang,
}

impl FromStr for HealthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ok" => Ok(HealthMode::Ok),
            "fail" => Ok(HealthMode::Fail),
            "hang" => Ok(HealthMode::Hang),
            other => Err(format!("unknown health mode {other:?} (ok|fail|hang)")),
        }
    }
}

impl FromStr for FaultKind {
    type Err = String;
    /// Command-line form: `none`, `status:503`, `status:429:retry-after=2`,
    /// `hang`, `reset`, `close-mid-stream:40`, `stall-mid-stream:5`,
    /// `end-mid-stream:5`, `end-without-done`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split(':');
        let kind = parts
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
            .replace('_', "-");
        let args: Vec<&str> = parts.collect();
        let number = |what: &str| -> Result<u32, String> {
            match args.as_slice() {
                [n] => n
                    .trim()
                    .parse::<u32>()
                    .map_err(|e| format!("{kind}: bad {what} {n:?}: {e}")),
                _ => Err(format!("{kind} takes exactly one argument ({kind}:N)")),
            }
        };
        let fault = match kind.as_str() {
            "none" | "" if args.is_empty() => FaultKind::None,
            "hang" if args.is_empty() => FaultKind::Hang,
            "reset" if args.is_empty() => FaultKind::Reset,
            "end-without-done" if args.is_empty() => FaultKind::EndWithoutDone,
            "close-mid-stream" => FaultKind::CloseMidStream {
                after_tokens: number("token count")?,
            },
            "stall-mid-stream" => FaultKind::StallMidStream {
                after_tokens: number("token count")?,
            },
            "end-mid-stream" => FaultKind::EndMidStream {
                after_tokens: number("token count")?,
            },
            "status" => {
                let code_text = args.first().ok_or("status needs a code (status:503)")?;
                let code = code_text
                    .trim()
                    .parse::<u16>()
                    .map_err(|e| format!("status: bad code {code_text:?}: {e}"))?;
                let mut retry_after = None;
                for opt in &args[1..] {
                    let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
                    match k.trim().to_ascii_lowercase().replace('_', "-").as_str() {
                        "retry-after" if !v.is_empty() => retry_after = Some(v.to_string()),
                        _ => return Err(format!("status: unknown option {opt:?}")),
                    }
                }
                FaultKind::Status { code, retry_after }
            }
            _ => return Err(format!("unknown fault {s:?}")),
        };
        Fault::new(fault.clone()).validate()?;
        Ok(fault)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::None => write!(f, "none"),
            FaultKind::Status { code, retry_after } => match retry_after {
                Some(r) => write!(f, "status:{code}:retry-after={r}"),
                None => write!(f, "status:{code}"),
            },
            FaultKind::Hang => write!(f, "hang"),
            FaultKind::Reset => write!(f, "reset"),
            FaultKind::EndWithoutDone => write!(f, "end-without-done"),
            FaultKind::CloseMidStream { after_tokens } => {
                write!(f, "close-mid-stream:{after_tokens}")
            }
            FaultKind::StallMidStream { after_tokens } => {
                write!(f, "stall-mid-stream:{after_tokens}")
            }
            FaultKind::EndMidStream { after_tokens } => {
                write!(f, "end-mid-stream:{after_tokens}")
            }
        }
    }
}

/// `Option<Duration>` as a humantime string ("200ms"); also reads a bare
/// number as milliseconds, and null as none.
pub(crate) mod latency_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Millis(u64),
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(None),
            Some(Repr::Millis(ms)) => Ok(Some(Duration::from_millis(ms))),
            Some(Repr::Text(t)) => humantime::parse_duration(t.trim())
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("bad duration {t:?}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_json_round_trip() {
        let f: Fault =
            serde_json::from_str(r#"{"kind":"status","code":429,"retry_after":"2","times":1}"#)
                .unwrap();
        assert_eq!(
            f,
            Fault::new(FaultKind::Status {
                code: 429,
                retry_after: Some("2".into())
            })
            .times(1)
        );
        let f: Fault = serde_json::from_str(r#"{"kind":"none","latency":"200ms"}"#).unwrap();
        assert_eq!(f, Fault::latency(Duration::from_millis(200)));
        let back: Fault = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        let f: Fault =
            serde_json::from_str(r#"{"kind":"close_mid_stream","after_tokens":3,"latency":50}"#)
                .unwrap();
        assert_eq!(f.kind, FaultKind::CloseMidStream { after_tokens: 3 });
        assert_eq!(f.latency, Some(Duration::from_millis(50)));
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"bogus"}"#).is_err());
    }

    #[test]
    fn fault_cli_strings() {
        let cases = [
            ("none", FaultKind::None),
            (
                "status:503",
                FaultKind::Status {
                    code: 503,
                    retry_after: None,
                },
            ),
            (
                "status:429:retry-after=2",
                FaultKind::Status {
                    code: 429,
                    retry_after: Some("2".into()),
                },
            ),
            ("hang", FaultKind::Hang),
            ("reset", FaultKind::Reset),
            (
                "close-mid-stream:40",
                FaultKind::CloseMidStream { after_tokens: 40 },
            ),
            (
                "stall-mid-stream:5",
                FaultKind::StallMidStream { after_tokens: 5 },
            ),
        ];
        for (text, want) in cases {
            let got: FaultKind = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
        }
        for bad in [
            "status",
            "status:abc",
            "status:99",
            "hang:3",
            "close-mid-stream",
            "x",
        ] {
            assert!(bad.parse::<FaultKind>().is_err(), "{bad}");
        }
        assert_eq!("FAIL".parse::<HealthMode>(), Ok(HealthMode::Fail));
    }
}
