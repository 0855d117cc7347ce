//! The README's first command, `kshift demo` (what `scripts/demo.sh` runs), in its short
//! mode: it migrates a topic from `old` to `new` under a live producer and consumer group,
//! step by step, and its clients see no error and miss no record; it keeps running after the
//! summary until SIGINT, then exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The demo's stdout, line by line, as it comes.
struct Lines {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    /// The first line (from now on) containing `text`, within `limit`.
    fn wait_for(&mut self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {text:?} within {limit:?}; the demo printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// The demo's process, killed if the test ends before it stopped (a failed assertion).
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_migrates_live_clients_without_an_error_or_a_missed_record() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_kshift"))
        .args(["demo", "--quick", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .arg("--tansu")
        .arg(common::tansu_binary())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run kshift demo");
    let stdout = demo.stdout.take().expect("piped stdout");
    let mut demo = Demo(demo);
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Lines {
        lines,
        seen: Vec::new(),
    };
    let started = Instant::now();
    let status = lines.wait_for("status page: http://", Duration::from_secs(30));
    assert!(status.contains("/status"), "{status}");
    let summary = lines.wait_for("summary:", Duration::from_secs(120));
    let elapsed = started.elapsed();
    eprintln!("demo (quick) reached its summary in {elapsed:?}: {summary}");
    let output = lines.seen.join("\n");
    assert!(summary.contains(" 0 missed"), "{output}");
    assert!(summary.contains(" 0 client errors"), "{output}");
    assert!(summary.contains("verify ok"), "{output}");
    // Every step of the runbook printed its line, and no step saw a client error.
    for step in [
        "1 prepare",
        "2 shadow",
        "3 ramp",
        "4 verify",
        "5 read cutover",
        "6 write cutover",
        "7 rollback",
    ] {
        let line = lines
            .seen
            .iter()
            .find(|l| l.contains(step))
            .unwrap_or_else(|| panic!("no line for step {step:?}:\n{output}"));
        // After the step's name: produced, consumed, re-delivered, errors.
        let errors: u64 = line
            .split_once(step)
            .map_or("", |(_, columns)| columns)
            .split_whitespace()
            .nth(3)
            .and_then(|field| field.parse().ok())
            .unwrap_or_else(|| panic!("no errors column in {line:?}"));
        assert_eq!(errors, 0, "{output}");
    }
    let moved = lines
        .seen
        .iter()
        .find(|l| l.contains("5 read cutover"))
        .cloned()
        .unwrap_or_default();
    assert!(
        moved.contains("group orders-app moved old->new, positions translated"),
        "{output}"
    );
    lines.wait_for("Ctrl-C stops the demo", Duration::from_secs(10));
    // Still running after the summary; SIGINT ends it cleanly.
    assert!(demo.0.try_wait().expect("demo status").is_none());
    let interrupted = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(interrupted.success());
    lines.wait_for("stopping:", Duration::from_secs(20));
    let exit = common::eventually(
        Duration::from_secs(30),
        "the demo to stop after SIGINT",
        async || {
            demo.0
                .try_wait()
                .expect("demo status")
                .ok_or("still running")
        },
    )
    .await;
    assert!(exit.success(), "{exit:?}\n{output}");
}
