//! `kshift user add|remove --credentials-file FILE NAME`: the client users of a SASL
//! credentials file (`[proxy.sasl] credentials_file`). The password is read from the first
//! line of stdin and only its salted hashes are written, one set per mechanism.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use kshift::security::{credentials, scram, Mechanism};

#[derive(clap::Subcommand)]
pub enum UserAction {
    /// Add NAME (or replace its secrets) with the password on the first line of stdin.
    Add {
        /// The credentials file (created if missing; replaced atomically, mode 0600).
        #[arg(long)]
        credentials_file: PathBuf,
        /// Mechanisms NAME may use (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN"
        )]
        mechanisms: Vec<String>,
        /// PBKDF2 iterations of the stored secrets (4096 to 1000000).
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
        name: String,
    },
    /// Remove NAME.
    Remove {
        #[arg(long)]
        credentials_file: PathBuf,
        name: String,
    },
}

/// `kshift user add|remove`.
pub fn run(action: UserAction) -> anyhow::Result<()> {
    match action {
        UserAction::Add {
            credentials_file,
            mechanisms,
            iterations,
            name,
        } => {
            let mechanisms = mechanisms
                .iter()
                .map(|m| {
                    Mechanism::from_name(m.trim()).ok_or_else(|| anyhow!("unknown mechanism {m:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if !(scram::MIN_ITERATIONS..=scram::MAX_ITERATIONS).contains(&iterations) {
                bail!(
                    "--iterations must be between {} and {}",
                    scram::MIN_ITERATIONS,
                    scram::MAX_ITERATIONS
                );
            }
            if name.is_empty() {
                bail!("the user name must not be empty");
            }
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("no password on stdin");
            }
            let entry = credentials::user_entry(password, &mechanisms, iterations);
            credentials::add_user(&credentials_file, &name, entry).map_err(anyhow::Error::msg)?;
            println!("user {name} written to {}", credentials_file.display());
        }
        UserAction::Remove {
            credentials_file,
            name,
        } => {
            if !credentials::remove_user(&credentials_file, &name).map_err(anyhow::Error::msg)? {
                bail!("no user {name} in {}", credentials_file.display());
            }
            println!("user {name} removed from {}", credentials_file.display());
        }
    }
    Ok(())
}
