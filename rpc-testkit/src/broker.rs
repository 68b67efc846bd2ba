//! The test broker: where it is, a virtual host of this process's own on it, and names no
//! other test uses.
//!
//! # Isolation
//!
//! The tests share a broker with whatever else runs on it: the examples serving
//! `calculator.calculate` on `/`, an aio-pika server, another copy of the suite. So every test
//! process that touches RabbitMQ works in a virtual host (vhost) of its own, and nothing it
//! declares can meet anyone else's queues, whatever their names:
//!
//! - the first call of [`url`] in a process creates vhost
//!   `rpc-test.<host>.<run>.<pid>.<start>` on `$RABBITMQ_URL`'s broker (with `rabbitmqctl`,
//!   which runs next to the broker), gives the URL's user every permission on it, and sets
//!   `RABBITMQ_URL` to the same broker on that vhost, so child processes (examples run as
//!   binaries, aio-pika peers, re-executed test binaries) use it too;
//! - at exit the process deletes it (an `atexit` handler: the test harness has no other
//!   end-of-run hook);
//! - a process that died without running it (SIGKILL) leaves its vhost behind: the next test
//!   process on the machine deletes the vhosts whose process is gone (`<pid>.<start>` names
//!   the process, `<start>` telling a reused pid apart), and `scripts/test.sh` deletes its
//!   run's (`<run>` is `$RPC_TEST_RUN`) and fails when there were any.
//!
//! Creating a vhost costs about a second of `rabbitmqctl`, so it is done once per process.
//! Names inside the vhost are still [`unique`]: the tests of one binary run in parallel.

use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

/// The broker the examples, tests and benchmark use when `$RABBITMQ_URL` is unset: a local
/// RabbitMQ with its default user, on the default vhost (`/`, written `%2f`).
pub const DEFAULT_RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The start of every vhost the test processes create.
pub const VHOST_PREFIX: &str = "rpc-test.";

/// Names the run in the test vhosts' names (`scripts/test.sh` sets it; default `manual`).
pub const RUN_ENV: &str = "RPC_TEST_RUN";

/// Set, with `RABBITMQ_URL`, to the vhost a process created, so that its child processes use
/// that vhost instead of creating their own.
pub const VHOST_ENV: &str = "RPC_TEST_VHOST";

/// `$RABBITMQ_URL`, or [`DEFAULT_RABBITMQ_URL`]: the broker as the user configured it (after
/// [`url`] ran, the isolated URL it exported).
pub fn configured_url() -> String {
    std::env::var("RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.into())
}

/// The broker URL every broker test uses: `$RABBITMQ_URL`'s broker and user, on this
/// process's own vhost (created by the first call; see the module docs).
///
/// # Panics
/// When the vhost cannot be created (no `rabbitmqctl`, or no broker): the tests fail, never
/// skip.
pub fn url() -> String {
    isolated().url.clone()
}

/// The URL as configured before [`url`] isolated this process: the shared vhost (`/` by
/// default) where the examples and other programs serve the fixed names.
pub fn shared_url() -> String {
    isolated().shared.clone()
}

/// This process's vhost (the one [`url`] names).
pub fn vhost() -> String {
    isolated().vhost.clone()
}

/// `prefix-<uuid>`: a queue or method name no other test, process or run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

struct Isolated {
    url: String,
    shared: String,
    vhost: String,
    /// Whether this process created the vhost (and deletes it at exit).
    owned: bool,
}

static ISOLATED: OnceLock<Isolated> = OnceLock::new();
/// The background sweep of dead processes' vhosts, joined at exit.
static SWEEP: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);

fn isolated() -> &'static Isolated {
    ISOLATED.get_or_init(isolate)
}

fn isolate() -> Isolated {
    let configured = configured_url();
    let current = vhost_of(&configured);
    // A child of a test process: its parent's vhost, which the parent deletes.
    if std::env::var(VHOST_ENV).is_ok_and(|v| v == current) {
        return Isolated { url: configured.clone(), shared: configured, vhost: current, owned: false };
    }
    let vhost = own_vhost_name();
    create_vhost(&vhost, &user_of(&configured));
    let url = with_vhost(&configured, &vhost);
    // Rust's own reads and writes of the environment take one lock; this runs once, before
    // the process starts a child that should see the new URL.
    std::env::set_var("RABBITMQ_URL", &url);
    std::env::set_var(VHOST_ENV, &vhost);
    delete_at_exit();
    let sweep = std::thread::Builder::new().name("rpc-testkit-sweep".into()).spawn(sweep_dead_vhosts);
    if let Ok(handle) = sweep {
        *SWEEP.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }
    Isolated { url, shared: configured, vhost, owned: true }
}

/// `rpc-test.<host>.<run>.<pid>.<start>`.
fn own_vhost_name() -> String {
    let run = std::env::var(RUN_ENV).unwrap_or_else(|_| "manual".into());
    let pid = std::process::id();
    format!("{}{}.{}.{pid}.{}", VHOST_PREFIX, host_label(), label(&run), start_time(pid).unwrap_or(0))
}

/// This machine's name, as it appears in the test vhosts' names.
pub fn host_label() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    label(host.trim())
}

/// `text` with everything but ASCII letters, digits and `-` replaced by `-`.
fn label(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect()
}

/// When process `pid` started (clock ticks since boot, field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Runs `rabbitmqctl` with `args`; its stdout, or why it failed.
pub fn try_rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("rabbitmqctl cannot run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("rabbitmqctl {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `rabbitmqctl` (the tests run next to the broker, as root or the rabbitmq user) and
/// returns its stdout.
///
/// # Panics
/// When it cannot run or fails: the test needs it.
pub fn rabbitmqctl(args: &[&str]) -> String {
    try_rabbitmqctl(args).unwrap_or_else(|e| panic!("{e}"))
}

fn create_vhost(vhost: &str, user: &str) {
    // One `rabbitmqctl eval` costs one CLI start instead of two; the two commands are the
    // fallback where the internal functions differ.
    let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if plain(user) {
        let code = format!(
            "ok = rabbit_vhost:add(<<\"{vhost}\">>, <<\"rpc-testkit\">>), \
             ok = rabbit_auth_backend_internal:set_permissions(<<\"{user}\">>, <<\"{vhost}\">>, \
             <<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"rpc-testkit\">>), created."
        );
        if try_rabbitmqctl(&["eval", &code]).is_ok_and(|out| out.trim() == "created") {
            return;
        }
    }
    let created = try_rabbitmqctl(&["add_vhost", vhost])
        .and_then(|_| try_rabbitmqctl(&["set_permissions", "-p", vhost, user, ".*", ".*", ".*"]));
    if let Err(e) = created {
        let _ = try_rabbitmqctl(&["delete_vhost", vhost]);
        panic!(
            "cannot create the test vhost {vhost} for user {user} ({e}); the broker tests run each test \
             process in a vhost of its own and need rabbitmqctl next to a running broker \
             (scripts/ensure-rabbitmq.sh starts one)"
        );
    }
}

fn delete_at_exit() {
    extern "C" fn at_exit() {
        if let Some(handle) = SWEEP.lock().ok().and_then(|mut s| s.take()) {
            let _ = handle.join();
        }
        if let Some(isolated) = ISOLATED.get().filter(|i| i.owned) {
            if let Err(e) = try_rabbitmqctl(&["delete_vhost", &isolated.vhost]) {
                eprintln!("rpc-testkit: could not delete the test vhost: {e}");
            }
        }
    }
    extern "C" {
        fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
    }
    // SAFETY: `at_exit` is a plain function that lives as long as the process.
    let registered = unsafe { atexit(at_exit) };
    assert_eq!(registered, 0, "atexit refused the test vhost's clean-up");
}

/// Deletes this machine's test vhosts whose process is gone (SIGKILLed before its exit
/// handler ran).
fn sweep_dead_vhosts() {
    let Ok(listed) = try_rabbitmqctl(&["list_vhosts", "-q", "--no-table-headers", "name"]) else { return };
    let ours = format!("{VHOST_PREFIX}{}.", host_label());
    for vhost in listed.lines().map(str::trim).filter(|v| v.starts_with(&ours)) {
        let mut fields = vhost.rsplitn(3, '.');
        let (Some(start), Some(pid)) = (fields.next(), fields.next()) else { continue };
        let (Ok(start), Ok(pid)) = (start.parse::<u64>(), pid.parse::<u32>()) else { continue };
        if start_time(pid) != Some(start) {
            let _ = try_rabbitmqctl(&["delete_vhost", vhost]);
        }
    }
}

/// `(ready, unacked, consumers)` of queue `name` as `rabbitmqctl` sees it; `target` picks the
/// node and vhost (e.g. `["-p", vhost]`, `["-n", "node@localhost"]`). `None` when there is no
/// such queue.
///
/// # Panics
/// When `rabbitmqctl` fails.
pub fn queue_counts(target: &[&str], name: &str) -> Option<(u64, u64, u64)> {
    let mut args = vec!["list_queues"];
    args.extend_from_slice(target);
    args.extend(["-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged", "consumers"]);
    let out = rabbitmqctl(&args);
    out.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))
        .and_then(|f| Some((f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
}

/// The vhost an AMQP URL names: its percent-decoded path, `/` when there is none.
pub fn vhost_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i + 1..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return "/".to_owned();
    }
    percent_decode(path)
}

/// `url` on vhost `vhost` (same scheme, user, host and query).
pub fn with_vhost(url: &str, vhost: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    let encoded: String = vhost
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{scheme}://{authority}/{encoded}{query}")
}

/// The user an AMQP URL logs in as (`guest` when it names none).
fn user_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &after_scheme[..after_scheme.find(['/', '?', '#']).unwrap_or(after_scheme.len())];
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => percent_decode(userinfo.split(':').next().unwrap_or("guest")),
        None => "guest".into(),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_broker_and_query_on_another_vhost() {
        assert_eq!(
            with_vhost("amqp://guest:guest@127.0.0.1:5672/%2f", "rpc-test.h.r.1.2"),
            "amqp://guest:guest@127.0.0.1:5672/rpc-test.h.r.1.2"
        );
        assert_eq!(with_vhost("amqp://u:p@host/v?heartbeat=5", "a/b"), "amqp://u:p@host/a%2Fb?heartbeat=5");
        assert_eq!(with_vhost("amqp://host", "x"), "amqp://host/x");
        for (url, vhost) in [
            ("amqp://guest:guest@127.0.0.1:5672/%2f", "/"),
            ("amqp://host", "/"),
            ("amqp://host/", "/"),
            ("amqp://host/wt-suite?x=1", "wt-suite"),
            ("amqp://host/a%2Fb", "a/b"),
        ] {
            assert_eq!(vhost_of(url), vhost, "vhost of {url}");
        }
        assert_eq!(user_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "guest");
        assert_eq!(user_of("amqp://us%40er:p@w@host/v"), "us@er");
        assert_eq!(user_of("amqp://host/v"), "guest");
    }

    #[test]
    fn a_vhost_name_tells_which_process_made_it() {
        let name = own_vhost_name();
        let pid = std::process::id();
        assert!(name.starts_with(&format!("{VHOST_PREFIX}{}.", host_label())), "{name}");
        let start = start_time(pid).expect("this process's start time");
        assert!(name.ends_with(&format!(".{pid}.{start}")), "expected it to end in .{pid}.{start}, got {name}");
        assert_eq!(label("a.b c-d"), "a-b-c-d");
    }

    #[test]
    fn the_sweep_deletes_the_vhosts_of_dead_processes_and_keeps_the_live_ones() {
        let ours = vhost();
        let mut child = Command::new("true").spawn().expect("spawn true");
        let dead_pid = child.id();
        child.wait().expect("wait for true");
        let dead = format!("{VHOST_PREFIX}{}.sweep-test.{dead_pid}.1", host_label());
        rabbitmqctl(&["add_vhost", &dead]);
        sweep_dead_vhosts();
        let listed = rabbitmqctl(&["list_vhosts", "-q", "--no-table-headers", "name"]);
        let listed: Vec<&str> = listed.lines().map(str::trim).collect();
        let _ = try_rabbitmqctl(&["delete_vhost", &dead]);
        assert!(!listed.contains(&dead.as_str()), "expected {dead} swept, got it still listed: {listed:?}");
        assert!(listed.contains(&ours.as_str()), "expected this process's {ours} kept, got {listed:?}");
    }
}
