//! No output shows a broker password, whatever its characters and however it is spelled in
//! the URL: [`wire::redact_url`], [`wire::redact_text`], and the `Display` and `Debug` of a
//! failed [`Rpc::connect`] (and of the `RpcError` it becomes).

use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use rpc_core::RpcError;
use rpc_transport_amqp::{wire, Rpc};

/// A piece of a password: URL delimiters, percent signs and escapes, quotes, unicode.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "/", "#", "?", "@", ":", "%", "%2F", "%40", "%3A", "%zz", "+", "=", " ", "\"", "'", "\\", "[", "]", "//",
            "é", "ß", "🦀", "\u{301}", "\u{0}", "\n", "\t", "\u{7f}",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z0-9._~-]{1,3}",
        any::<char>().prop_map(String::from),
    ]
}

/// A password around a distinctive core (what must never show), and the core.
fn password() -> impl Strategy<Value = (String, String)> {
    (vec(piece(), 0..4), "[A-Za-z0-9]{12}", vec(piece(), 0..4))
        .prop_map(|(left, core, right)| (format!("{}{core}{}", left.concat(), right.concat()), core))
}

/// Every byte as `%XX`: the core then appears in the URL only encoded.
fn percent_encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// The URLs a user may write with this password, to a port where nothing listens.
fn urls(password: &str, port: u16) -> Vec<String> {
    let encoded = percent_encode_all(password);
    vec![
        format!("amqp://guest:{password}@127.0.0.1:{port}/%2f"),
        format!("amqp://guest:{encoded}@127.0.0.1:{port}/%2f"),
        format!("amqp://us%3Aer:{password}@127.0.0.1:{port}"),
        format!("amqps://guest:{encoded}@localhost:{port}/vh?heartbeat=10"),
        format!("amqp:guest:{password}@127.0.0.1:{port}"),
        format!("guest:{password}@127.0.0.1:{port}"),
    ]
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// Everything a user or a log can see of a failed connect: the error's `Display` and `Debug`,
/// its sources', and those of the `RpcError` it becomes (with its wire form).
fn shown(outcome: Result<Rpc, rpc_transport_amqp::Error>) -> String {
    let Err(err) = outcome else { return "connected to a closed port?!".into() };
    let mut text = format!("{err}\n{err:?}\n");
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        text.push_str(&format!("{e}\n{e:?}\n"));
        source = e.source();
    }
    let rpc_error = RpcError::from(err);
    text.push_str(&format!("{rpc_error}\n{rpc_error:?}\n{}", rpc_error.to_wire()));
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_password_shows_in_redacted_urls_texts_or_connect_errors((password, core) in password()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let port = closed_port();
        let encoded_core = percent_encode_all(&core);
        for url in urls(&password, port) {
            let redacted = wire::redact_url(&url);
            let quoted = wire::redact_text(&format!("Invalid URL: '{url}' ({url:?})"), &url);
            let connect = runtime.block_on(
                Rpc::builder().with_connect_timeout(Duration::from_secs(5)).connect(&url),
            );
            let errors = shown(connect);
            for (what, text) in [("redact_url", &redacted), ("redact_text", &quoted), ("connect error", &errors)] {
                prop_assert!(
                    !text.contains(&core) && !text.contains(&encoded_core),
                    "{} of {:?} shows the password: {}", what, url, text
                );
            }
            prop_assert!(redacted.contains("***"), "{:?} gave {:?}", url, redacted);
        }
    }
}

#[tokio::test]
async fn a_password_typed_raw_with_slashes_hashes_or_question_marks_never_shows_in_connect_errors() {
    let port = closed_port();
    for password in ["AbC+/xYz=Secret1", "Secret2#frag", "Secret3?q=1", "p%40Secret4", "Secret5@x"] {
        let url = format!("amqp://guest:{password}@127.0.0.1:{port}/%2f");
        let text = shown(Rpc::connect(&url).await);
        let core = password.replace("p%40", "");
        for fragment in [password, &core, "Secret"] {
            assert!(!text.contains(fragment), "{url}: {fragment:?} shows in:\n{text}");
        }
        assert!(text.contains("guest:***@"), "{url}: the user is still named:\n{text}");
    }
}
