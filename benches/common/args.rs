//! A bench's command line (`slow_broker`, `fetch_shape`).

/// The bench's command line: `--bench` (a full run, not the smoke run of `cargo test`),
/// flags and numeric `--name value` options.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Args {
        Args(std::env::args().collect())
    }

    /// A full run (`cargo bench`), not the smoke run of `cargo test`.
    pub fn full(&self) -> bool {
        self.flag("--bench")
    }

    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    /// The number after `name`, if given and a number.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    }
}
