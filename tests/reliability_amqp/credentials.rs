//! Credentials and TLS: no password in logs, errors or the client example's output;
//! `amqps://` through a TLS-terminating proxy, and connect timeouts against wrong or silent
//! peers.

use super::*;

/// Removes a broker user when dropped.
struct TestUser(String);

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl").args(["delete_user", &self.0]).output();
    }
}

/// Prints an outcome, Display and Debug, for the parent to inspect.
fn show<T: std::fmt::Debug, E: std::fmt::Display + std::fmt::Debug>(what: &str, outcome: &Result<T, E>) {
    match outcome {
        Ok(v) => println!("outcome {what}: ok {v:?}"),
        Err(e) => println!("outcome {what}: error {e} | {e:?}"),
    }
}

/// The child of the credentials test: every log line at TRACE (ours and lapin's, `log`
/// records included) goes to stderr, every error to stdout, while it connects, calls, is cut off by the broker, fails
/// to reconnect with a changed password, reconnects, and tries bad URLs.
pub(super) async fn log_capture() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let user = env_required("RPC_SECRET_USER");
    let secret = env_required("RPC_SECRET_PASSWORD");
    let mut parts = UrlParts::of(&url());
    (parts.user, parts.password) = (user.clone(), secret.clone());
    let good = parts.to_url("amqp");
    let method = unique("rel-creds");
    let connection_name = unique("rel-creds-conn");
    let rpc = Rpc::builder()
        .with_connection_name(&connection_name)
        .with_reconnect_delay(Duration::from_millis(50), Duration::from_millis(200))
        .with_deadline(Duration::from_secs(5))
        .connect(&good)
        .await
        .expect("connect as the test user");
    rpc.register_async(&method, |p: Probe| async move { Ok::<_, HandlerError>(p.t) }).await.unwrap();
    show("call", &rpc.call::<f64>(&method, kwargs! { "t" => 1 }).await);

    // Cut off by the broker: reconnects.
    let close = |reason: &str| {
        let pids = broker_connections(&connection_name);
        assert_eq!(pids.len(), 1, "{pids:?}");
        rabbitmqctl(&["close_connection", &pids[0], reason]);
    };
    let before = rpc.reply_queue().unwrap();
    close("closed by the credentials test");
    wait_until("reconnected", Duration::from_secs(30), || rpc.reply_queue().is_some_and(|q| q != before)).await;
    show("call after reconnecting", &rpc.call::<f64>(&method, kwargs! { "t" => 2 }).await);

    // Cut off again, while its password no longer works: reconnection attempts fail and log.
    rabbitmqctl(&["change_password", &user, &format!("changed-{}", uuid::Uuid::new_v4().simple())]);
    let before = rpc.reply_queue().unwrap();
    close("closed by the credentials test, password changed");
    wait_until("link lost", Duration::from_secs(30), || rpc.reply_queue().as_deref() != Some(before.as_str())).await;
    for _ in 0..10 {
        show("call while the password is refused", &rpc.call::<f64>(&method, kwargs! { "t" => 3 }).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rabbitmqctl(&["change_password", &user, &secret]);
    assert!(rpc.wait_connected(Duration::from_secs(60)).await, "reconnected once the password works again");
    show("call after the password works again", &rpc.call::<f64>(&method, kwargs! { "t" => 4 }).await);
    rpc.close().await.unwrap();

    // Refusals of every kind, each with the secret in the URL.
    let mut wrong = parts.clone();
    wrong.password = format!("{secret}-wrong");
    show("wrong password", &Rpc::connect(&wrong.to_url("amqp")).await);
    let mut vhost = parts.clone();
    vhost.rest = "/no-such-vhost".into();
    show("unknown vhost", &Rpc::connect(&vhost.to_url("amqp")).await);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut refused = parts.clone();
    (refused.host, refused.port) = ("127.0.0.1".into(), closed_port);
    show("connection refused", &Rpc::connect(&refused.to_url("amqp")).await);
    show("amqps to a plain port", &Rpc::connect(&parts.to_url("amqps")).await);
    let channel_err = Rpc::connect(&wrong.to_url("amqp")).await.map_err(RpcError::from);
    show("as an RpcError", &channel_err);
    println!("done");
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "not {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_logs_or_errors_except_lapins_own_trace_frame_dumps() {
    const TEST: &str = "credentials::credentials_never_appear_in_logs_or_errors_except_lapins_own_trace_frame_dumps";
    if let Some(role) = child_role() {
        return play(&role).await;
    }
    let user = unique("rel-user");
    let secret = format!("Secret{}", uuid::Uuid::new_v4().simple());
    rabbitmqctl(&["add_user", &user, &secret]);
    let _cleanup = TestUser(user.clone());
    // On the virtual host the child connects to (the URL's).
    rabbitmqctl(&["set_permissions", "-p", &common_amqp::vhost_of(&url()), &user, ".*", ".*", ".*"]);
    let mut child = RoleProcess::spawn(
        TEST,
        "log-capture",
        &[("RPC_SECRET_USER", user.clone()), ("RPC_SECRET_PASSWORD", secret.clone())],
        true,
    );
    let mut lines = Vec::new();
    let collect = async {
        while let Some(line) = child.lines.recv().await {
            lines.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(180), collect).await.expect("the child finishes");
    let status = child.child.wait().await.unwrap();
    let output = lines.join("\n");
    assert!(status.success(), "child failed:\n{output}");
    // The password as text, and as the byte list and hex a `Debug` of its bytes would show.
    let bytes = secret.as_bytes();
    let renderings = [
        secret.clone(),
        bytes.iter().map(u8::to_string).collect::<Vec<_>>().join(", "),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
    ];
    let (lapin_frame_dumps, leaks): (Vec<&String>, Vec<&String>) = lines
        .iter()
        .filter(|line| renderings.iter().any(|r| line.contains(r.as_str())))
        .partition(|line| line.contains("TRACE") && line.contains("lapin::io_loop") && line.contains("StartOk"));
    assert!(leaks.is_empty(), "{} lines show the password, e.g. {:?}", leaks.len(), leaks.first());
    // Known, documented in docs/AMQP.md: lapin's own TRACE level dumps every frame it writes,
    // the connection's SASL response (user and password bytes) included. Nothing else does.
    println!(
        "credentials: lapin TRACE dumps of the StartOk frame carrying the password bytes: {}",
        lapin_frame_dumps.len()
    );
    // The run went through every path it claims to, so the check above means something.
    for expected in [
        "outcome call: ok 1.0",
        "lost the link to the broker",
        "reconnecting to the broker failed",
        "outcome call while the password is refused: error",
        "reconnected to the broker",
        "outcome call after the password works again: ok 4.0",
        "outcome wrong password: error",
        "outcome unknown vhost: error",
        "outcome connection refused: error",
        "outcome amqps to a plain port: error",
        "outcome as an RpcError: error",
        &format!("{user}:***@"),
        "lapin::",
        "done",
    ] {
        assert!(output.contains(expected), "no {expected:?} in the child's output:\n{output}");
    }
    for line in lines.iter().filter(|l| l.starts_with("outcome") && !l.contains("password is refused")) {
        println!("credentials: {line}");
    }
    println!(
        "credentials: {} lines of logs (all at TRACE) and errors captured; only lapin's frame dumps show the password",
        lines.len()
    );
}

#[tokio::test]
async fn amqps_url_to_a_plain_amqp_port_fails_within_seconds_with_a_redacted_tls_error() {
    // A broker does listen there (else this would only test a refused connection).
    let _ = common_amqp::connect().await.close(200, "OK".into()).await;
    let secret = format!("Secret{}", uuid::Uuid::new_v4().simple());
    let mut parts = UrlParts::of(&url());
    parts.password = secret.clone();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(60), Rpc::connect(&parts.to_url("amqps"))).await;
    let took = started.elapsed();
    let err = outcome.expect("amqps:// to a plain port must not hang").unwrap_err();
    let shown = format!("{err} | {err:?}");
    println!("amqps to plain port: {took:?}: {err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(matches!(err, rpc::amqp::Error::Connect { .. }), "{shown}");
    assert!(!shown.contains(&secret), "{shown}");
    assert!(shown.contains(&format!("amqps://{}:***@", parts.user)), "{shown}");
    // rustls's words for a peer that answers TLS with AMQP.
    assert!(shown.contains("corrupt message"), "{shown}");
}

#[tokio::test]
async fn amqp_and_amqps_urls_to_a_silent_peer_fail_at_the_connect_timeout_instead_of_hanging() {
    // Accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let keep = std::thread::spawn(move || silent.incoming().flatten().collect::<Vec<_>>());
    let limit = Duration::from_secs(2);
    for scheme in ["amqp", "amqps"] {
        let secret = format!("Secret{}", uuid::Uuid::new_v4().simple());
        let url = format!("{scheme}://guest:{secret}@127.0.0.1:{port}/%2f");
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(Duration::from_secs(60), Rpc::builder().with_connect_timeout(limit).connect(&url))
                .await;
        let err = outcome.unwrap_or_else(|_| panic!("{scheme}: connect to a silent peer hung for 60 s")).unwrap_err();
        let took = started.elapsed();
        println!("{scheme} to a silent peer: {took:?}: {err}");
        assert!(
            matches!(&err, rpc::amqp::Error::ConnectTimeout { timeout, .. } if *timeout == limit),
            "expected rpc::amqp::Error::ConnectTimeout {{ timeout, .. }} if *timeout == limit, got {err:?}"
        );
        assert!(took >= limit && took < limit + Duration::from_secs(5), "{took:?}");
        let shown = format!("{err} | {err:?}");
        assert!(!shown.contains(&secret) && shown.contains("guest:***@"), "{shown}");
    }
    assert_eq!(rpc::amqp::RpcConfig::default().connect_timeout, rpc::amqp::config::DEFAULT_CONNECT_TIMEOUT);
    drop(keep);
}

/// The child of the TLS test: connects with `amqps://` (trusting only the test CA, through
/// `SSL_CERT_FILE`), serves and calls a method, and prints `tls ok <calls>`.
pub(super) async fn tls_client() {
    let tls_url = env_required("RPC_TLS_URL");
    let rpc = Rpc::connect(&tls_url).await.expect("amqps:// connect through the TLS proxy");
    let method = unique("rel-tls");
    rpc.register_async(&method, |p: Probe| async move { Ok::<_, HandlerError>(p.t * 2.0) }).await.unwrap();
    let mut ok = 0;
    for i in 0..20 {
        let v: f64 = rpc.call(&method, kwargs! { "t" => i }).await.expect("call over TLS");
        assert_eq!(v, f64::from(i) * 2.0);
        ok += 1;
    }
    rpc.close().await.unwrap();
    delete_queue(&method).await;
    println!("tls ok {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_through_a_tls_terminating_proxy_reaches_the_broker_and_an_untrusted_certificate_is_refused() {
    const TEST: &str =
        "credentials::amqps_through_a_tls_terminating_proxy_reaches_the_broker_and_an_untrusted_certificate_is_refused";
    if let Some(role) = child_role() {
        return play(&role).await;
    }
    let pki = common_amqp::tls::TestPki::generate();
    let parts = UrlParts::of(&url());
    let upstream =
        std::net::ToSocketAddrs::to_socket_addrs(&(parts.host.as_str(), parts.port)).unwrap().next().unwrap();
    let (port, stats) = common_amqp::tls::start_proxy(&pki, upstream);
    let mut tls = parts.clone();
    (tls.host, tls.port) = ("localhost".into(), port);

    // Trusting the test CA (and nothing else): works end to end.
    let mut child = RoleProcess::spawn(
        TEST,
        "tls-client",
        &[
            ("RPC_TLS_URL", tls.to_url("amqps")),
            ("SSL_CERT_FILE", pki.ca().display().to_string()),
            ("SSL_CERT_DIR", String::new()),
        ],
        false,
    );
    let line = child.expect_line("tls ok ", Duration::from_secs(120)).await;
    assert_eq!(line, "tls ok 20");
    assert!(child.finish(Duration::from_secs(30)).await.success());
    assert!(stats.handshakes.load(Ordering::SeqCst) >= 1);
    assert!(stats.bytes_to_broker.load(Ordering::SeqCst) > 0);
    let version = stats.last_version.lock().unwrap().clone();
    println!("amqps through the proxy: {} handshake(s), {version:?}", stats.handshakes.load(Ordering::SeqCst));

    // In process, without touching the environment: a connection made with lapin's builder
    // and the CA as an extra trusted certificate, handed to `Rpc::create` (docs/AMQP.md).
    let tls_config = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(std::fs::read_to_string(pki.ca()).expect("ca.pem")),
    };
    let conn = lapin::DefaultConnectionBuilder::new()
        .expect("lapin runtime")
        .with_uri_str(tls.to_url("amqps"))
        .with_tls_config(tls_config)
        .connect()
        .await
        .expect("amqps:// with a custom CA through lapin's builder");
    let over_tls = Rpc::create(conn.create_channel().await.unwrap()).await.unwrap();
    let method = unique("rel-tls-create");
    over_tls.register_async(&method, |p: Probe| async move { Ok::<_, HandlerError>(p.t + 1.0) }).await.unwrap();
    assert_eq!(over_tls.call::<f64>(&method, kwargs! { "t" => 41 }).await.unwrap(), 42.0);
    over_tls.close().await.unwrap();
    conn.close(200, "OK".into()).await.unwrap();
    delete_queue(&method).await;
    assert!(stats.handshakes.load(Ordering::SeqCst) >= 2);

    // This process trusts the usual roots only: the test CA's certificate is refused, clearly.
    let secret = format!("Secret{}", uuid::Uuid::new_v4().simple());
    tls.password = secret.clone();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(60), Rpc::connect(&tls.to_url("amqps"))).await;
    let err = outcome.expect("must not hang").unwrap_err();
    let shown = format!("{err} | {err:?}");
    println!("amqps with an untrusted certificate: {:?}: {err}", started.elapsed());
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");
    assert!(!shown.contains(&secret), "{shown}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn the_client_example_never_prints_the_password_whatever_its_characters() {
    let core = format!("Pw{}", uuid::Uuid::new_v4().simple());
    let parts = UrlParts::of(&url());
    // Raw '/', '#', '?', '@' (the URL then means something else to a parser), and an encoded
    // '@' (the broker refuses the login).
    let passwords = [
        format!("AbC+/{core}="),
        format!("a#{core}"),
        format!("{core}?x=1"),
        format!("p%40{core}"),
        format!("{core}@x"),
    ];
    for password in passwords {
        let mut with = parts.clone();
        with.password = password.clone();
        let rabbitmq_url = with.to_url("amqp");
        let out = tokio::process::Command::new(env!("CARGO"))
            .args(["run", "--quiet", "--example", "client", "--"])
            .args(["--amqp", "--timeout", "10", "calculator.calculate", "a=1", "op=+", "b=2"])
            .env("RABBITMQ_URL", &rabbitmq_url)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .await
            .expect("cargo run --example client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("client example with password {password:?}: {}", stderr.lines().last().unwrap_or_default());
        assert_eq!(out.status.code(), Some(1), "a failed call exits 1; stdout {stdout:?}, stderr {stderr:?}");
        assert!(
            !stdout.contains(&core) && !stderr.contains(&core),
            "the password shows: stdout {stdout:?}, stderr {stderr:?}"
        );
        let redacted = format!("{}:***@", parts.user);
        assert!(stderr.contains("ERROR ") && stderr.contains(&redacted), "stderr {stderr:?}");
    }
}
