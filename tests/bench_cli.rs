//! `kshift bench` against a real broker, directly and through kshift: both targets in the
//! table with ratios to the first, closed and open loop, the JSON file, and the consume and
//! fetch modes that read records back.

mod common;

use common::{Broker, Kshift};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_targets_side_by_side() {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let direct = format!("direct={}", broker.bootstrap());
    let through = format!("kshift={}", kshift.bootstrap());
    let args = vec![
        "--target".to_string(),
        direct.clone(),
        "--target".into(),
        through.clone(),
        "--messages".into(),
        "300".into(),
        "--rounds".into(),
        "3".into(),
        "--json".into(),
        json.to_str().unwrap().into(),
    ];
    let (stdout, _) = bench(args).await;
    assert!(
        stdout.contains("300 records of 100 B sent to direct"),
        "{stdout}"
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("direct ") || l.contains("kshift "))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(
        rows[0].contains("(1.00x)"),
        "the first target is the baseline: {stdout}"
    );
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let targets = document["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for target in targets {
        assert!(
            target["aggregatedPublishLatency50"].as_f64().unwrap() > 0.0,
            "{document}"
        );
        assert!(
            target["aggregatedPublishLatency99"].as_f64().unwrap() > 0.0,
            "{document}"
        );
        assert!(target["publishRate"].as_f64().unwrap() > 0.0, "{document}");
    }

    // Open loop for a fixed time: about rate x duration records.
    let args = vec![
        "--target".to_string(),
        through,
        "--rate".into(),
        "200".into(),
        "--duration".into(),
        "1".into(),
        "--rounds".into(),
        "2".into(),
    ];
    let (stdout, _) = bench(args).await;
    assert!(stdout.contains("open loop at 200 records/s"), "{stdout}");
    let sent: u64 = stdout
        .lines()
        .find(|line| line.contains("records of"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    assert!(
        (150..=250).contains(&sent),
        "expected about 200 records in 1 s at 200/s, got {sent}: {stdout}"
    );
}

/// Runs `kshift bench` with `args`; returns (stdout, stderr), failing the test on exit != 0.
async fn bench(args: Vec<String>) -> (String, String) {
    let mut command = vec!["bench"];
    command.extend(args.iter().map(String::as_str));
    let run = common::kshift_cli(&command).await;
    assert!(run.ok(), "{}", run.described());
    (run.stdout, run.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_end_to_end_consume_and_fetch_modes_with_a_plot() {
    let broker = Broker::start().await;
    let kshift = Kshift::start_single(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("latency.svg");
    let targets = [
        "--target".to_string(),
        format!("direct={}", broker.bootstrap()),
        "--target".into(),
        format!("kshift={}", kshift.bootstrap()),
    ];

    // End to end: send to arrival at a consumer of each target; interval lines; a plot.
    let mut args: Vec<String> = targets.to_vec();
    args.extend(
        [
            "--mode",
            "e2e",
            "--topic",
            "bench-e2e",
            "--messages",
            "400",
            "--rounds",
            "2",
            "--inflight",
            "4",
            "--interval",
            "0.05",
            "--plot",
        ]
        .map(String::from),
    );
    args.push(svg.to_str().unwrap().into());
    let (stdout, stderr) = bench(args).await;
    assert!(
        stdout.contains("400 records of 100 B sent to direct"),
        "{stdout}"
    );
    for name in ["direct", "kshift"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(name)),
            "{stdout}"
        );
    }
    assert!(
        stderr.contains("records sent,")
            && stderr.contains("records/sec")
            && stderr.contains("max latency."),
        "interval lines in kafka-producer-perf-test style: {stderr}"
    );
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(drawing.contains("<svg") && drawing.contains("direct") && drawing.contains("kshift"));

    // Consume throughput of records produced first.
    let mut args: Vec<String> = targets.to_vec();
    args.extend(
        [
            "--mode",
            "consume",
            "--topic",
            "bench-consume",
            "--messages",
            "500",
            "--rounds",
            "2",
        ]
        .map(String::from),
    );
    let (stdout, stderr) = bench(args).await;
    assert!(
        stdout.contains("1000 records of 100 B read by a consumer from direct"),
        "{stdout}"
    );
    assert!(stderr.contains("500 records read in"), "{stderr}");

    // The same read by Fetch requests of the bench's own, asking for 4 KB at a time.
    let fetch = |skip_fill: bool| {
        let mut args: Vec<String> = targets.to_vec();
        args.extend(
            [
                "--mode",
                "fetch",
                "--topic",
                "bench-fetch",
                "--messages",
                "500",
                "--rounds",
                "2",
                "--fetch-max-bytes",
                "4096",
            ]
            .map(String::from),
        );
        if skip_fill {
            args.push("--skip-fill".into());
        }
        bench(args)
    };
    let (stdout, stderr) = fetch(false).await;
    assert!(
        stdout.contains("1000 records of 100 B fetched from direct, acks=all, 1 fetch in flight"),
        "{stdout}"
    );
    let fetches: Vec<u64> = stderr
        .lines()
        .filter(|line| line.contains("500 records read in "))
        .filter_map(|line| line.rsplit_once(" (")?.1.split_once(" fetches)"))
        .map(|(count, _)| count.parse().unwrap())
        .collect();
    assert_eq!(fetches.len(), 4, "two rounds of two targets: {stderr}");
    // How many depends on how the producer batched (a broker answers at least one whole
    // batch, however large, per fetch).
    assert!(fetches.iter().all(|&n| n >= 1), "{stderr}");
    // Again over what the topic holds, producing nothing: the log starts where it did.
    let (stdout, stderr) = fetch(true).await;
    assert!(
        stdout.contains("1000 records of 100 B fetched from direct"),
        "{stdout}"
    );
    assert_eq!(
        stderr.matches("500 records read in ").count(),
        4,
        "{stderr}"
    );
}
