//! A progress bar for long operator commands (`verify`, `backfill`): redrawn in place on a
//! terminal, one plain line every 10 s when stderr is a log.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    drawn: Option<Instant>,
    terminal: bool,
}

const BAR: usize = 30;

impl Progress {
    pub fn new(label: impl Into<String>, total: u64) -> Progress {
        Progress {
            label: label.into(),
            total,
            started: Instant::now(),
            drawn: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Shows `done` of the total (redrawn at most 5 times a second on a terminal).
    pub fn update(&mut self, done: u64) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if self.drawn.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.draw(done);
    }

    /// Shows the final state and ends the line.
    pub fn finish(&mut self, done: u64) {
        self.draw(done);
        if self.terminal {
            eprintln!();
        }
    }

    fn draw(&mut self, done: u64) {
        self.drawn = Some(Instant::now());
        let line = line(&self.label, done, self.total, self.started.elapsed());
        if self.terminal {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    }
}

fn line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * BAR as f64).round() as usize;
    format!(
        "{label} [{}{}] {:>3.0}% {done}/{total} {:.0}s",
        "#".repeat(filled),
        " ".repeat(BAR - filled),
        fraction * 100.0,
        elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_share_and_counts() {
        let half = line("verify orders", 50, 100, Duration::from_secs(3));
        assert_eq!(
            half,
            format!(
                "verify orders [{}{}]  50% 50/100 3s",
                "#".repeat(15),
                " ".repeat(15)
            )
        );
        assert!(line("x", 0, 0, Duration::ZERO).contains("100% 0/0"));
        assert!(line("x", 150, 100, Duration::ZERO).contains("100% 150/100"));
    }
}
