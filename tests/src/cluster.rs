//! Clusters of `treeai run` processes on loopback (OPERATIONS.md "Cluster"), reading Kafka
//! (Tansu): the views on every process's SQL equal `treeai backfill` of the same events; a
//! kill -9 of one process stops the others with a clear reason and a restart of all resumes
//! from the newest complete checkpoint; a checkpoint written by one cluster shape restores on
//! another (1×2 → 3×1 → 2×2) while Kafka keeps producing — views, lake and alert topic as
//! with one uninterrupted run.

use crate::common::{free_addr, signal, Moto, Running};
use crate::kafka::{
    backfill_views, check_exactly_once, check_lake, generated, input_file, kcat_produce, metric, treeai, wait_views,
    Broker, Views,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// Starts a cluster of `processes` × `workers` with `args` (every process the same) and its
/// peers on free loopback ports.
fn start_cluster(processes: usize, workers: usize, args: &[String]) -> Vec<Running> {
    start_cluster_with_env(processes, workers, args, &[])
}

/// As [`start_cluster`], with extra environment variables for every process.
fn start_cluster_with_env(processes: usize, workers: usize, args: &[String], envs: &[(&str, &str)]) -> Vec<Running> {
    let peers: Vec<String> = (0..processes).map(|_| free_addr()).collect();
    let peers = peers.join(",");
    (0..processes)
        .map(|i| {
            let mut all: Vec<String> = vec!["run".into(), "--workers".into(), workers.to_string()];
            all.extend(["--processes".into(), processes.to_string(), "--process".into(), i.to_string()]);
            all.extend(["--peers".into(), peers.clone(), "--peer-timeout-ms".into(), "30000".into()]);
            all.extend(args.iter().cloned());
            Running::start_with_env(&all.iter().map(String::as_str).collect::<Vec<_>>(), envs)
        })
        .collect()
}

/// The Kafka flags for `prefix`'s topics and the lake at `lake`.
fn run_args(flags: &[String], lake: &Path) -> Vec<String> {
    let mut args: Vec<String> = flags.to_vec();
    args.extend(
        ["--idle-timeout-ms", "1000", "--lake-roll-ms", "1000", "--checkpoint-interval-ms", "500"].map(String::from),
    );
    args.extend(["--lake".to_string(), lake.to_str().unwrap().to_string()]);
    args
}

/// Waits until every process serves views equal to `want` at watermark `w`.
fn wait_every_process(cluster: &[Running], want: &Views, w: i64, secs: u64) {
    for (i, run) in cluster.iter().enumerate() {
        eprintln!("  process {i}: waiting for the views");
        wait_views(run, want, w, secs);
    }
}

/// Generated events (no line with a tab, which kcat cannot key), their backfill and their
/// count of rejected lines.
struct Input {
    text: String,
    dir: tempfile::TempDir,
}

impl Input {
    fn new(args: &[&str]) -> Input {
        Input { text: generated(args), dir: tempfile::tempdir().unwrap() }
    }
    fn lines(&self) -> Vec<&str> {
        self.text.lines().filter(|l| !l.contains('\t')).collect()
    }
    fn backfill(&self) -> (Views, i64, i64) {
        let lines = self.lines();
        let input = input_file(self.dir.path(), &lines);
        let out = self.dir.path().join("bf-summary");
        let summary = treeai(&[
            "backfill",
            "--workers",
            "2",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        let rejected: i64 = summary
            .split(", ")
            .find_map(|s| s.strip_suffix(" rejected")?.parse().ok())
            .unwrap_or_else(|| panic!("{summary}"));
        let (views, w) = backfill_views(&input, &self.dir.path().join("backfill"));
        (views, w, rejected)
    }
}

/// Stops every process with SIGTERM; each exits 0 (after the cluster's final checkpoint).
fn stop_all(cluster: &mut [Running]) {
    for run in cluster.iter() {
        run.signal("TERM");
    }
    let statuses: Vec<_> = cluster.iter_mut().map(|run| run.wait_exit(40)).collect();
    let mut failed = String::new();
    for (i, (run, status)) in cluster.iter_mut().zip(&statuses).enumerate() {
        if status.and_then(|s| s.code()) != Some(0) {
            let lines: Vec<String> = run.lines.try_iter().collect();
            let tail = lines[lines.len().saturating_sub(8)..].join("\n");
            failed += &format!("process {i} did not stop cleanly ({status:?}); its last lines:\n{tail}\n");
        }
    }
    assert!(failed.is_empty(), "{failed}");
}

#[test]
fn three_processes_and_two_by_two_serve_the_whole_views_on_every_process() {
    let broker = Broker::for_test();
    let input = Input::new(&["--count", "12000", "--trees", "300", "--bad-fraction", "0.02", "--season", "emergency"]);
    let (want, w, rejected) = input.backfill();
    assert!(want["tree_scores"].len() > 100, "a meaningful input");
    let prefix = format!("c1-{}", std::process::id());
    let flags = broker.topics(&prefix, 4);
    kcat_produce(&broker.addr, &prefix, &input.lines(), input.dir.path());
    let valid = input.lines().len() as i64 - rejected;
    for (processes, workers) in [(3, 1), (2, 2)] {
        eprintln!("{processes} processes x {workers} workers");
        let lake = input.dir.path().join(format!("lake-{processes}x{workers}"));
        let mut cluster = start_cluster(processes, workers, &run_args(&flags, &lake));
        wait_every_process(&cluster, &want, w, 180);
        // Every process answers for the whole cluster: the lake too.
        check_lake(&cluster[processes - 1], valid, rejected);
        // An idle cluster still completes the checkpoints asked of any process, one after another.
        let mut last = 0;
        for run in &cluster {
            let (status, _, body) = crate::common::http(&run.http, "POST", "/v1/admin/checkpoint", &[], b"").unwrap();
            let body = String::from_utf8_lossy(&body).to_string();
            assert_eq!(status, 200, "an idle cluster's checkpoint: {body}");
            let number: u64 = serde_json::from_str::<serde_json::Value>(&body).unwrap()["checkpoint"].as_u64().unwrap();
            assert!(number > last, "checkpoint {number} after {last}");
            last = number;
        }
        stop_all(&mut cluster);
    }
}

#[test]
fn kill_9_of_one_process_stops_the_others_and_the_restarted_cluster_resumes() {
    use rand::{Rng, SeedableRng};
    let broker = Broker::for_test();
    let input = Input::new(&["--count", "100000", "--trees", "2000", "--rate", "2000", "--bad-fraction", "0.01"]);
    let (want, w, rejected) = input.backfill();
    let valid = input.lines().len() as i64 - rejected;
    for seed in crate::recovery::kill_seeds(crate::recovery::rounds().min(2)) {
        eprintln!("cluster kill -9 round: TREEAI_KILL_SEED={seed}");
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let prefix = format!("c9-{}-{seed}", std::process::id());
        let flags = broker.topics(&prefix, 4);
        kcat_produce(&broker.addr, &prefix, &input.lines(), input.dir.path());
        let lake = input.dir.path().join(format!("lake-{seed}"));
        let args = run_args(&flags, &lake);
        let mut cluster = start_cluster(3, 1, &args);
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..5000)));
        let victim = rng.random_range(0..3);
        let _ = cluster[victim].child.kill();
        let _ = cluster[victim].child.wait();
        eprintln!("  killed process {victim}");
        let killed = Instant::now();
        for (i, run) in cluster.iter_mut().enumerate().filter(|(i, _)| *i != victim) {
            let status = run.wait_exit(20).unwrap_or_else(|| panic!("process {i} still runs 20 s after its peer died"));
            assert!(!status.success(), "process {i} exited 0 after losing a peer");
            let reason =
                run.wait_for(5, |l| l.contains("lost the link to cluster process") || l.contains("lost process"));
            eprintln!("  process {i}: {reason}");
        }
        eprintln!("  the others stopped {:.1} s after the kill", killed.elapsed().as_secs_f64());
        drop(cluster);
        let mut cluster = start_cluster(3, 1, &args);
        for run in cluster.iter_mut() {
            run.wait_for(60, |l| l.contains("resumed from checkpoint"));
        }
        wait_every_process(&cluster, &want, w, 300);
        check_exactly_once(&cluster[1], &broker.addr, &prefix, valid, rejected);
        stop_all(&mut cluster);
    }
}

#[test]
fn rescale_one_by_two_to_three_by_one_to_two_by_two_while_kafka_produces() {
    let broker = Broker::for_test();
    let input = Input::new(&["--count", "60000", "--trees", "1000", "--rate", "2000", "--bad-fraction", "0.01"]);
    let (want, w, rejected) = input.backfill();
    let valid = input.lines().len() as i64 - rejected;
    let lines = input.lines();
    let chunk = lines.len().div_ceil(3);
    let prefix = format!("cr-{}", std::process::id());
    let flags = broker.topics(&prefix, 4);
    let lake = input.dir.path().join("lake");
    let args = run_args(&flags, &lake);
    kcat_produce(&broker.addr, &prefix, &lines[..chunk], input.dir.path());
    let mut shapes = [(1, 2), (3, 1), (2, 2)].into_iter().enumerate().peekable();
    while let Some((step, (processes, workers))) = shapes.next() {
        eprintln!("rescale step {step}: {processes} processes x {workers} workers");
        let mut cluster = start_cluster(processes, workers, &args);
        if step > 0 {
            for run in cluster.iter_mut() {
                run.wait_for(60, |l| l.contains("resumed from checkpoint"));
            }
        }
        // Kafka keeps producing while this shape runs.
        let more = &lines[(chunk * (step + 1)).min(lines.len())..(chunk * (step + 2)).min(lines.len())];
        kcat_produce(&broker.addr, &prefix, more, input.dir.path());
        if shapes.peek().is_some() {
            std::thread::sleep(Duration::from_secs(2));
            stop_all(&mut cluster);
        } else {
            wait_every_process(&cluster, &want, w, 300);
            check_exactly_once(&cluster[0], &broker.addr, &prefix, valid, rejected);
            stop_all(&mut cluster);
        }
    }
}

/// Events read by the whole cluster (each process counts what its own workers read).
fn read_by(cluster: &[Running]) -> f64 {
    cluster.iter().map(|run| metric(&run.http, "treeai_events_read_total").unwrap_or(0.0)).sum()
}

/// Waits until `cluster` has read `n` events, every process still running.
fn wait_read_by(cluster: &mut [Running], n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while read_by(cluster) < n as f64 {
        assert_running(cluster);
        assert!(Instant::now() < deadline, "the cluster read {} of {n} events in {secs} s", read_by(cluster));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_running(cluster: &mut [Running]) {
    for (i, run) in cluster.iter_mut().enumerate() {
        assert!(run.child.try_wait().unwrap().is_none(), "process {i} stopped");
    }
}

/// Outages while clustered: the object store of the lake and the checkpoints hangs (its
/// server paused) while Kafka brings more events, then the broker goes away and comes back
/// with its log. Neither outage stops a process; the views, the lake (on S3) and the output
/// topics end as without them: nothing lost, nothing twice.
#[test]
fn broker_and_object_store_outages_while_clustered_lose_nothing_and_repeat_nothing() {
    // A broker that keeps its log across restarts (Tansu on S3 storage), and another S3 for us.
    let broker_store = Moto::start();
    broker_store.create_bucket("tansu");
    let mut broker = Broker::private("s3://tansu/", &broker_store.envs);
    let store = Moto::start();
    store.create_bucket("treeai");
    let envs: Vec<(&str, &str)> = store.envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let input = Input::new(&["--count", "30000", "--trees", "400", "--seed", "17", "--bad-fraction", "0.01"]);
    let (want, w, rejected) = input.backfill();
    let valid = input.lines().len() as i64 - rejected;
    let lines = input.lines();
    let third = lines.len() / 3;
    let prefix = "outage";
    let mut args = broker.topics(prefix, 4);
    args.extend(
        ["--idle-timeout-ms", "1000", "--lake-roll-ms", "1000", "--checkpoint-interval-ms", "500"].map(String::from),
    );
    args.extend(["--lake".to_string(), "s3://treeai/lake".to_string()]);
    kcat_produce(&broker.addr, prefix, &lines[..third], input.dir.path());
    let mut cluster = start_cluster_with_env(2, 1, &args, &envs);
    wait_read_by(&mut cluster, third, 120);

    // The object store hangs: ingest goes on, checkpoints wait.
    eprintln!("object store paused");
    signal(store.pid(), "STOP");
    kcat_produce(&broker.addr, prefix, &lines[third..2 * third], input.dir.path());
    wait_read_by(&mut cluster, 2 * third, 120);
    std::thread::sleep(Duration::from_secs(3));
    assert_running(&mut cluster);
    signal(store.pid(), "CONT");
    eprintln!("object store back");

    // The broker goes away and comes back with its log; the rest arrives.
    broker.stop();
    cluster[0].wait_for(60, |l| l.contains("kafka errors"));
    std::thread::sleep(Duration::from_secs(2));
    assert_running(&mut cluster);
    broker.start(&broker_store.envs);
    kcat_produce(&broker.addr, prefix, &lines[2 * third..], input.dir.path());
    wait_every_process(&cluster, &want, w, 300);
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_exactly_once(&cluster[1], &broker.addr, prefix, valid, rejected)
    }));
    if let Err(panic) = checked {
        for (i, run) in cluster.iter().enumerate() {
            run.print_notable(&format!("process {i}"));
        }
        // Slow or lost? The lake again after another minute, per table and source.
        std::thread::sleep(Duration::from_secs(60));
        for table in ["readings", "assessments", "trees"] {
            let q = format!("select source, count(*) from lake.{table} group by source order by source");
            eprintln!("lake.{table} a minute later: {:?}", crate::recovery::sql(&cluster[0], &q));
        }
        std::panic::resume_unwind(panic);
    }
    stop_all(&mut cluster);
}

#[test]
fn a_missing_peer_or_a_mismatched_one_is_a_clear_start_up_error() {
    let (a, b) = (free_addr(), free_addr());
    let peers = format!("{a},{b}");
    // Process 1 alone: process 0 never comes.
    let mut lone = Running::start(&[
        "run",
        "--no-lake",
        "--no-checkpoint",
        "--workers",
        "1",
        "--processes",
        "2",
        "--process",
        "1",
        "--peers",
        &peers,
        "--peer-timeout-ms",
        "1500",
    ]);
    let status = lone.wait_exit(20).expect("a lone process must give up");
    assert!(!status.success());
    lone.wait_for(5, |l| l.contains("not every peer was reachable") && l.contains(&format!("process 0 at {a}")));
    // Two processes with other worker counts.
    let p0 = Running::start(&[
        "run",
        "--no-lake",
        "--no-checkpoint",
        "--workers",
        "1",
        "--processes",
        "2",
        "--process",
        "0",
        "--peers",
        &peers,
        "--peer-timeout-ms",
        "20000",
    ]);
    let mut p1 = Running::start(&[
        "run",
        "--no-lake",
        "--no-checkpoint",
        "--workers",
        "2",
        "--processes",
        "2",
        "--process",
        "1",
        "--peers",
        &peers,
        "--peer-timeout-ms",
        "20000",
    ]);
    let status = p1.wait_exit(30).expect("a mismatched peer must give up");
    assert!(!status.success());
    p1.wait_for(5, |l| l.contains("--workers") && l.contains("every process of a cluster needs the same"));
    drop(p0);
    // A bad configuration is refused before anything starts.
    let out = std::process::Command::new(crate::common::treeai_bin())
        .args(["run", "--no-lake", "--processes", "3", "--process", "1", "--peers", &peers])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 peer addresses for 3 processes"));
}
