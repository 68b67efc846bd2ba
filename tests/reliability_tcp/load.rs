//! Load and faults, with every answer checked: a consumer aborted mid-run while 64 clients keep
//! sending, and 100,000 tasks through the Producer.

use super::*;

/// How the tasks of a run ended.
#[derive(Debug, Default)]
struct Tally {
    /// The task's own answer, byte for byte.
    ok: AtomicUsize,
    /// Another task's answer: the worst outcome.
    crossed: AtomicUsize,
    /// An error reply, a malformed reply, or no reply in 60 s.
    lost: AtomicUsize,
    /// The first few problems, for the failure message.
    samples: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn note(&self, what: String) {
        let mut samples = self.samples.lock().unwrap();
        if samples.len() < 10 {
            samples.push(what);
        }
    }
}

/// Task `i` of a run: `calculator calculate <i> + 0.5` answers `<i>.5`; every `hold_every`-th
/// task is instead `probe hold <i> <ms>` (in flight for `ms`), answering `<i>`.
fn task(i: usize, hold: Option<(usize, u64)>) -> (String, String) {
    match hold {
        Some((every, ms)) if i % every == 0 => (format!("probe hold {i} {ms}\n"), format!("{i}\n")),
        _ => (format!("calculator calculate {i} + 0.5\n"), format!("{i}.5\n")),
    }
}

/// The task index an answer belongs to, if it is any task's answer.
fn owner(reply: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(reply).ok()?.strip_suffix('\n')?;
    text.strip_suffix(".5").unwrap_or(text).parse().ok()
}

/// One exchange that reports failures instead of panicking.
async fn try_exchange(addr: SocketAddr, line: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(line).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(reply)
}

/// `clients` clients take tasks `0..tasks` in turn and send each to `addr`, checking every
/// answer against its own task.
async fn run_tasks(
    addr: SocketAddr,
    tasks: usize,
    clients: usize,
    hold: Option<(usize, u64)>,
    done: Arc<AtomicUsize>,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (tally, next, done) = (Arc::clone(&tally), Arc::clone(&next), Arc::clone(&done));
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    break;
                }
                let (line, expected) = task(i, hold);
                match tokio::time::timeout(Duration::from_secs(60), try_exchange(addr, line.as_bytes())).await {
                    Ok(Ok(reply)) if reply == expected.as_bytes() => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(reply)) if owner(&reply).is_some() => {
                        tally.crossed.fetch_add(1, Ordering::Relaxed);
                        tally.note(format!("task {i} ({line:?}) got {:?}", String::from_utf8_lossy(&reply)));
                    }
                    Ok(Ok(reply)) => {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        tally.note(format!("task {i} ({line:?}) got {:?}", String::from_utf8_lossy(&reply)));
                    }
                    Ok(Err(e)) => {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        tally.note(format!("task {i} ({line:?}): {e}"));
                    }
                    Err(_) => {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        tally.note(format!("task {i} ({line:?}): no reply within 60 s"));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(client) = set.join_next().await {
        client.expect("a client task panicked");
    }
    tally
}

#[track_caller]
fn assert_all_answered(tally: &Tally, tasks: usize) {
    let (ok, crossed, lost) =
        (tally.ok.load(Ordering::Relaxed), tally.crossed.load(Ordering::Relaxed), tally.lost.load(Ordering::Relaxed));
    let samples = tally.samples.lock().unwrap().join("\n");
    assert_eq!((crossed, lost), (0, 0), "{crossed} crossed and {lost} lost of {tasks}:\n{samples}");
    assert_eq!(ok, tasks, "{samples}");
}

async fn start_consumers(n: usize) -> Vec<Server> {
    let mut servers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, _) = mpsc::unbounded_channel();
        servers.push(Server::consumer(registry(tx, Arc::default()), ConsumerConfig::default()).await);
    }
    servers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_aborted_under_load_loses_no_task_and_every_client_gets_its_own_answer() {
    const TASKS: usize = 6_000;
    let _heavy = HEAVY.lock().await;
    let mut consumers = start_consumers(3).await;
    let producer = Producer::new(consumers.iter().map(|c| c.addr).collect(), ProducerConfig::default());
    let gateway = Server::producer(producer.clone()).await;
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // Every 4th task is held 20 ms on its consumer, so the victim surely has tasks in flight.
    let run = tokio::spawn(run_tasks(gateway.addr, TASKS, CLIENTS, Some((4, 20)), Arc::clone(&done)));

    // Once a third of the tasks are answered and the victim has tasks in flight: abort it.
    let (at, in_flight) = within(60, async {
        loop {
            let stats = producer.stats();
            if done.load(Ordering::Relaxed) >= TASKS / 3 && stats[0].outstanding > 0 {
                return (done.load(Ordering::Relaxed), stats[0].outstanding);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let victim = consumers.remove(0);
    let victim_addr = victim.addr;
    victim.kill().await;
    assert!(TcpStream::connect(victim_addr).await.is_err(), "the aborted consumer still accepts");

    let tally = within(120, run).await.unwrap();
    let elapsed = started.elapsed();
    assert_all_answered(&tally, TASKS);
    let stats = producer.stats();
    assert!(at < TASKS, "the consumer was aborted after the run");
    assert!(stats[0].served > 0, "the victim never served: {stats:?}");
    assert!(stats[0].failures >= 1, "no attempt failed over: {stats:?}");
    // Each task is counted once, by the consumer whose answer it got.
    assert_eq!(stats.iter().map(|s| s.served).sum::<u64>(), TASKS as u64, "{stats:?}");
    eprintln!(
        "failover: {TASKS} tasks from {CLIENTS} clients in {elapsed:.2?}; consumer aborted after {at} answers with \
         {in_flight} tasks in flight to it; lost 0, crossed 0; stats {stats:?}"
    );
    gateway.stop().await;
    for consumer in consumers {
        consumer.stop().await;
    }
}

/// `RPC_LOAD_TASKS`, or [`DEFAULT_LOAD_TASKS`].
fn load_tasks() -> usize {
    match std::env::var("RPC_LOAD_TASKS") {
        Ok(n) => n.parse().unwrap_or_else(|_| panic!("RPC_LOAD_TASKS={n:?} is not a count")),
        Err(_) => DEFAULT_LOAD_TASKS,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_thousand_tasks_through_the_producer_from_64_clients_each_get_their_own_answer_in_bounded_memory() {
    let tasks = load_tasks();
    let _heavy = HEAVY.lock().await;
    let consumers = start_consumers(2).await;
    let producer = Producer::new(consumers.iter().map(|c| c.addr).collect(), ProducerConfig::default());
    let gateway = Server::producer(producer.clone()).await;
    let memory = Memory::start();
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn(run_tasks(gateway.addr, tasks, CLIENTS, None, Arc::clone(&done)));
    // Live memory once warmed up (a tenth of the tasks done) and at the end: a leak shows as
    // growth between the two, whatever the allocator kept from earlier tests.
    within(600, async {
        while done.load(Ordering::Relaxed) < tasks / 10 && !run.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let warm = live_rss_kib();
    let tally = within(600, run).await.unwrap();
    let elapsed = started.elapsed();
    let end = live_rss_kib();
    let peak = memory.peak_growth_kib();
    assert_all_answered(&tally, tasks);
    let stats = producer.stats();
    assert_eq!(stats.iter().map(|s| s.served).sum::<u64>(), tasks as u64, "{stats:?}");
    assert!(stats.iter().all(|s| s.served > 0 && s.outstanding == 0), "{stats:?}");
    // 64 tasks in flight hold a few hundred KiB (three sockets and an 8 KiB buffer or two
    // each); a leak of 100 bytes per task would pass 8 MiB at the default count.
    let leaked = end.saturating_sub(warm);
    assert!(leaked < 8 * 1024, "live memory grew by {} over {tasks} tasks", mib(leaked));
    assert!(peak < 32 * 1024, "peak RSS rose by {} over {tasks} tasks", mib(peak));
    eprintln!(
        "load: {tasks} tasks from {CLIENTS} clients in {elapsed:.2?} ({:.0}/s); lost 0, crossed 0; peak RSS +{} \
         over the run (VmHWM {}); live memory after 10% of tasks {}, at the end {}; consumer failures {:?}",
        tasks as f64 / elapsed.as_secs_f64(),
        mib(peak),
        mib(status_kib("VmHWM")),
        mib(warm),
        mib(end),
        stats.iter().map(|s| s.failures).collect::<Vec<_>>()
    );
    gateway.stop().await;
    for consumer in consumers {
        consumer.stop().await;
    }
}
