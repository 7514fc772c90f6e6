//! `ballast check` (and `run`) on bad configs: a clear error that names the
//! key and the line, a non-zero exit, never a panic.

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), stderr)
}

const GOOD: &str = r#"
[[pool]]
name = "p"
[[pool.servers]]
addr = "127.0.0.1:9"

[[route]]
name = "r"
pool = "p"
"#;

fn assert_rejected(text: &str, expect: &[&str]) {
    let (ok, err) = check(text);
    assert!(!ok, "accepted:\n{text}");
    for e in expect {
        assert!(err.contains(e), "error does not mention {e:?}:\n{err}");
    }
}

#[test]
fn the_shipped_config_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["check", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ballast.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(check(GOOD).0);
}

#[test]
fn unknown_key() {
    let text = GOOD.replace("name = \"r\"", "name = \"r\"\nretries = 5");
    assert_rejected(&text, &["bad.toml:9", "route[0].retries"]);
}

#[test]
fn bad_duration() {
    let text = format!("{GOOD}\n[route.timeouts]\nconnect = \"2 parsecs\"\n");
    assert_rejected(&text, &["bad.toml:12", "route[0].timeouts.connect"]);
}

#[test]
fn route_to_missing_pool() {
    let text = GOOD.replace("pool = \"p\"", "pool = \"nope\"");
    assert_rejected(&text, &["bad.toml:9", "route[0].pool", "nope"]);
}

#[test]
fn empty_pool() {
    let text = "[[pool]]\nname = \"p\"\n\n[[route]]\nname = \"r\"\npool = \"p\"\n";
    assert_rejected(text, &["bad.toml:1", "pool[0]", "no servers"]);
}

#[test]
fn duplicate_names() {
    let text = format!(
        "{GOOD}\n[[pool]]\nname = \"p\"\n[[pool.servers]]\naddr = \"127.0.0.1:10\"\n\
         \n[[route]]\nname = \"r\"\npool = \"p\"\npath_prefix = \"/v1/\"\n"
    );
    assert_rejected(
        &text,
        &[
            "bad.toml:12",
            "pool[1].name",
            "bad.toml:17",
            "route[1].name",
        ],
    );
}

#[test]
fn several_problems_are_all_reported() {
    let text = GOOD
        .replace(
            "addr = \"127.0.0.1:9\"",
            "addr = \"127.0.0.1:9\"\nweight = 0",
        )
        .replace("pool = \"p\"", "pool = \"q\"");
    assert_rejected(&text, &["weight", "route[0].pool"]);
}

#[test]
fn missing_file_and_run_refuses_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["check", "--config", "/nonexistent/ballast.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ballast.toml"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, GOOD.replace("pool = \"p\"", "pool = \"nope\"")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "run started on a bad config");
    assert!(String::from_utf8_lossy(&out.stderr).contains("route[0].pool"));
}

/// `[server] tls` and a TLS pool's files: every problem names the key and
/// the file, and says what is wrong.
#[test]
fn tls_files_are_checked() {
    use crate::certs::Pki;
    let pki = Pki::new("check");
    let good = pki.server("good", &["127.0.0.1"]);
    let other = pki.server("other", &["127.0.0.1"]);
    let old = pki.expired_server("old", &["127.0.0.1"]);
    let client = pki.client("client", "ballast");
    let listener = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[server]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n{GOOD}",
            cert.display(),
            key.display()
        )
    };
    assert!(check(&listener(&good.cert, &good.key)).0);
    assert_rejected(
        &listener(&old.cert, &old.key),
        &["server.tls.cert", "old.pem", "expired on 2021-01-01"],
    );
    assert_rejected(
        &listener(&good.cert, &other.key),
        &[
            "server.tls.key",
            "other-key.pem",
            "does not belong to the certificate",
            "good.pem",
        ],
    );
    assert_rejected(
        &listener(&good.key, &good.key),
        &["server.tls.cert", "holds something other than certificates"],
    );
    assert_rejected(
        &listener(&good.cert, &good.cert),
        &["server.tls.key", "holds no PEM private key"],
    );
    assert_rejected(
        &listener(&pki.path("missing.pem"), &good.key),
        &["server.tls.cert", "cannot read", "missing.pem"],
    );
    assert_rejected(
        &listener(&pki.path(""), &good.key),
        &["server.tls.cert", "not a regular file"],
    );
    // No secret of a key file ever shows in a message.
    let (_, err) = check(&listener(&good.cert, &other.key));
    let key_text = std::fs::read_to_string(&other.key).unwrap();
    let key_body = key_text.lines().nth(1).unwrap();
    assert!(!err.contains(key_body), "{err}");

    let pool = |extra: &str| {
        GOOD.replace(
            "name = \"p\"",
            &format!("name = \"p\"\ntls = true\n{extra}"),
        )
    };
    let ca = format!("ca_file = \"{}\"", pki.ca_file.display());
    assert!(check(&pool(&ca)).0);
    assert_rejected(
        &pool(&format!("ca_file = \"{}\"", good.key.display())),
        &["pool[0].ca_file", "holds something other than certificates"],
    );
    let identity = |cert: &std::path::Path, key: &std::path::Path| {
        pool(&format!(
            "{ca}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            cert.display(),
            key.display()
        ))
    };
    assert!(check(&identity(&client.cert, &client.key)).0);
    assert_rejected(
        &identity(&client.cert, &good.key),
        &["pool[0].client_key", "does not belong to the certificate"],
    );
    assert_rejected(
        &identity(&old.cert, &old.key),
        &["pool[0].client_cert", "expired on"],
    );
    assert_rejected(
        &pool("sni = \"not a name\""),
        &["pool[0].sni", "not a DNS name"],
    );
}

#[test]
fn dns_keys_are_checked() {
    assert_rejected(
        &format!("[server]\nresolver = [\"dns.example\"]\n{GOOD}"),
        &["server.resolver[0]", "not a name server address"],
    );
    assert_rejected(
        &GOOD.replace("name = \"p\"", "name = \"p\"\nresolve_interval = \"0s\""),
        &["pool[0].resolve_interval", "greater than 0"],
    );
    assert_rejected(
        &GOOD.replace("127.0.0.1:9", "bad name!:80"),
        &["pool[0].servers[0].addr", "not a host name"],
    );
    assert_rejected(
        &GOOD.replace("127.0.0.1:9", "surely-not-a-host.invalid:80"),
        &[
            "pool[0].servers[0].addr",
            "cannot resolve 'surely-not-a-host.invalid'",
        ],
    );
    // With name servers of its own, the gateway resolves names when it runs.
    let own = format!(
        "[server]\nresolver = [\"127.0.0.1:5353\"]\n{}",
        GOOD.replace("127.0.0.1:9", "backend.test:80")
    );
    assert!(check(&own).0);
}

/// The shipped DeepSeek example passes `ballast check` once its key and
/// certificate exist (here: test files, and the test's own name server so
/// that no real lookup of api.deepseek.com is needed).
#[test]
fn the_deepseek_example_passes() {
    use crate::certs::Pki;
    let pki = Pki::new("example");
    let pair = pki.server("gateway", &["gateway.example.com"]);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/examples/deepseek.toml"
    ))
    .unwrap()
    .replace(
        "/etc/ballast/tls/fullchain.pem",
        &pair.cert.display().to_string(),
    )
    .replace(
        "/etc/ballast/tls/privkey.pem",
        &pair.key.display().to_string(),
    )
    .replace("[server]\n", "[server]\nresolver = [\"127.0.0.1:5353\"]\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deepseek.toml");
    std::fs::write(&path, &text).unwrap();
    let run = |key: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ballast"));
        c.args(["check", "--config"])
            .arg(&path)
            .env_remove("DEEPSEEK_API_KEY");
        if let Some(k) = key {
            c.env("DEEPSEEK_API_KEY", k);
        }
        c.output().unwrap()
    };
    let out = run(Some("sk-test"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the key it says which variable is missing.
    let out = run(None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DEEPSEEK_API_KEY") && err.contains("pool[0].api_key_env"),
        "{err}"
    );
}

/// The configs shipped for containers (deploy/compose, deploy/k8s) pass
/// `ballast check` with their key set. Their host names exist only inside
/// compose or a cluster, so the test's own name server stands in for
/// theirs (nothing is looked up at check time then).
#[test]
fn the_deploy_configs_pass() {
    for file in ["deploy/compose/ballast.toml", "deploy/k8s/ballast.toml"] {
        let text = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .replace("[server]\n", "[server]\nresolver = [\"127.0.0.1:5353\"]\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ballast.toml");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(["check", "--config"])
            .arg(&path)
            .env("DEEPSEEK_API_KEY", "sk-test")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
