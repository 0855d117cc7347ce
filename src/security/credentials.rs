//! The credentials file clients authenticate against (`[proxy.sasl] credentials_file`): per
//! user, the SCRAM stored keys and a salted PLAIN hash — never a password.
//!
//! ```toml
//! [users.alice.scram_sha_256]
//! salt = "base64"
//! iterations = 4096
//! stored_key = "base64"
//! server_key = "base64"
//! [users.alice.scram_sha_512]   # same fields
//! [users.alice.plain]
//! salt = "base64"
//! iterations = 4096
//! hash = "base64"               # PBKDF2-HMAC-SHA-256 of the password
//! ```
//! `kshift user add --credentials-file FILE NAME` writes entries (password on stdin).
//!
//! Invariants:
//! - [`CredentialStore::current`] re-reads the file when its modification time or size
//!   changed, so every new authentication sees the file as it is now; a file that no longer
//!   parses leaves the last good one in force (and says so in the log).
//! - The file is replaced atomically (write, then rename) by [`add_user`], so a reader
//!   never sees half of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::scram::{ScramHash, StoredCredential, MAX_ITERATIONS, MIN_ITERATIONS};
use super::{constant_time_eq, random_bytes, Mechanism};
use crate::sync::lock;

/// The whole file as TOML sees it.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
}

/// One user's secrets, one entry per mechanism it may use.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram_sha_256: Option<ScramEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram_sha_512: Option<ScramEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain: Option<PlainEntry>,
}

/// A SCRAM credential, base64 fields as Kafka's own tools print them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScramEntry {
    pub salt: String,
    pub iterations: u32,
    pub stored_key: String,
    pub server_key: String,
}

/// A PLAIN password as PBKDF2-HMAC-SHA-256(password, salt, iterations).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlainEntry {
    pub salt: String,
    pub iterations: u32,
    pub hash: String,
}

/// Checked, decoded secrets of one user.
#[derive(Debug, Clone, Default)]
struct User {
    scram_sha_256: Option<StoredCredential>,
    scram_sha_512: Option<StoredCredential>,
    plain: Option<StoredPlain>,
}

#[derive(Clone)]
struct StoredPlain {
    salt: Vec<u8>,
    iterations: u32,
    hash: Vec<u8>,
}

impl std::fmt::Debug for StoredPlain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPlain")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// The users of one version of the file.
#[derive(Debug, Default)]
pub struct Credentials {
    users: BTreeMap<String, User>,
}

impl Credentials {
    /// Parses and checks the file's text; errors name the user and field.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let file: CredentialsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut users = BTreeMap::new();
        for (name, entry) in file.users {
            let scram = |field: &str, entry: &Option<ScramEntry>| {
                entry
                    .as_ref()
                    .map(|e| {
                        decode_scram(e).map_err(|reason| format!("users.{name}.{field}: {reason}"))
                    })
                    .transpose()
            };
            let user = User {
                scram_sha_256: scram("scram_sha_256", &entry.scram_sha_256)?,
                scram_sha_512: scram("scram_sha_512", &entry.scram_sha_512)?,
                plain: entry
                    .plain
                    .as_ref()
                    .map(|e| {
                        decode_plain(e).map_err(|reason| format!("users.{name}.plain: {reason}"))
                    })
                    .transpose()?,
            };
            users.insert(name, user);
        }
        Ok(Credentials { users })
    }

    /// The stored SCRAM credential of `user` for `hash`.
    pub fn scram(&self, user: &str, hash: ScramHash) -> Option<StoredCredential> {
        let user = self.users.get(user)?;
        match hash {
            ScramHash::Sha256 => user.scram_sha_256.clone(),
            ScramHash::Sha512 => user.scram_sha_512.clone(),
        }
    }

    /// True when `password` is `user`'s PLAIN password. Costs the same PBKDF2 work whether
    /// or not the user exists.
    pub fn check_plain(&self, user: &str, password: &str) -> bool {
        match self.users.get(user).and_then(|u| u.plain.as_ref()) {
            Some(stored) => {
                let hash = ScramHash::Sha256.salted_password(
                    password.as_bytes(),
                    &stored.salt,
                    stored.iterations,
                );
                constant_time_eq(&hash, &stored.hash)
            }
            None => {
                let _ = ScramHash::Sha256.salted_password(
                    password.as_bytes(),
                    b"kshift",
                    MIN_ITERATIONS,
                );
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn check_iterations(iterations: u32) -> Result<(), String> {
    if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        Ok(())
    } else {
        Err(format!(
            "iterations {iterations} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
        ))
    }
}

fn decode(field: &str, value: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(value)
        .map_err(|e| format!("{field} is not base64: {e}"))
}

fn decode_scram(entry: &ScramEntry) -> Result<StoredCredential, String> {
    check_iterations(entry.iterations)?;
    Ok(StoredCredential {
        salt: decode("salt", &entry.salt)?,
        iterations: entry.iterations,
        stored_key: decode("stored_key", &entry.stored_key)?,
        server_key: decode("server_key", &entry.server_key)?,
    })
}

fn decode_plain(entry: &PlainEntry) -> Result<StoredPlain, String> {
    check_iterations(entry.iterations)?;
    Ok(StoredPlain {
        salt: decode("salt", &entry.salt)?,
        iterations: entry.iterations,
        hash: decode("hash", &entry.hash)?,
    })
}

/// The entries for `password` under `mechanisms`.
pub fn user_entry(password: &str, mechanisms: &[Mechanism], iterations: u32) -> UserEntry {
    let scram = |hash| {
        let credential = StoredCredential::new(hash, password, iterations);
        ScramEntry {
            salt: BASE64.encode(&credential.salt),
            iterations,
            stored_key: BASE64.encode(&credential.stored_key),
            server_key: BASE64.encode(&credential.server_key),
        }
    };
    let mut entry = UserEntry::default();
    for mechanism in mechanisms {
        match mechanism {
            Mechanism::ScramSha256 => entry.scram_sha_256 = Some(scram(ScramHash::Sha256)),
            Mechanism::ScramSha512 => entry.scram_sha_512 = Some(scram(ScramHash::Sha512)),
            Mechanism::Plain => {
                let salt = random_bytes(24);
                let hash =
                    ScramHash::Sha256.salted_password(password.as_bytes(), &salt, iterations);
                entry.plain = Some(PlainEntry {
                    salt: BASE64.encode(salt),
                    iterations,
                    hash: BASE64.encode(hash),
                });
            }
        }
    }
    entry
}

/// Adds (or replaces) `user` in the file at `path`, creating it if needed; the file is
/// replaced atomically and readable by its owner only.
pub fn add_user(path: &Path, user: &str, entry: UserEntry) -> Result<(), String> {
    let mut file = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str::<CredentialsFile>(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CredentialsFile::default(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    file.users.insert(user.to_string(), entry);
    write_file(path, &file)
}

/// Removes `user` from the file at `path`; false when it was not there.
pub fn remove_user(path: &Path, user: &str) -> Result<bool, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut file: CredentialsFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let removed = file.users.remove(user).is_some();
    write_file(path, &file)?;
    Ok(removed)
}

fn write_file(path: &Path, file: &CredentialsFile) -> Result<(), String> {
    let text = format!(
        "# kshift SASL credentials (no passwords): written by `kshift user add`.\n{}",
        toml::to_string(file).map_err(|e| e.to_string())?
    );
    let temporary = path.with_extension("tmp-kshift");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = |temporary: &Path| -> std::io::Result<()> {
        use std::io::Write as _;
        let mut out = options.open(temporary)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(temporary, path)
    };
    write(&temporary).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The credentials file, re-read when it changes.
#[derive(Debug)]
pub struct CredentialStore {
    path: PathBuf,
    /// The last good version and the (modification time, size) of the file it was read
    /// at; one lock, held only to compare and swap, never across a read of the file.
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    credentials: Arc<Credentials>,
    stamp: Option<(SystemTime, u64)>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

impl CredentialStore {
    /// Reads the file; an unreadable or invalid file is an error (kshift does not start).
    pub fn open(path: &Path) -> Result<CredentialStore, String> {
        let stamp = stamp(path);
        let credentials = read(path)?;
        Ok(CredentialStore {
            path: path.to_path_buf(),
            current: Mutex::new(Loaded {
                credentials: Arc::new(credentials),
                stamp,
            }),
        })
    }

    /// The credentials as the file has them now (re-read if it changed since last time).
    pub fn current(&self) -> Arc<Credentials> {
        let now = stamp(&self.path);
        {
            let loaded = lock(&self.current);
            if loaded.stamp == now {
                return loaded.credentials.clone();
            }
        }
        // Read without the lock: a slow disk never holds up other connections' lookups.
        let reread = read(&self.path);
        let mut loaded = lock(&self.current);
        if loaded.stamp != now {
            loaded.stamp = now;
            match reread {
                Ok(credentials) => {
                    tracing::info!(path = %self.path.display(), users = credentials.len(), "credentials file reloaded");
                    loaded.credentials = Arc::new(credentials);
                }
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "credentials file not reloaded; the previous one stays in force");
                }
            }
        }
        loaded.credentials.clone()
    }
}

fn read(path: &Path) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Credentials::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_entries_verify_and_hold_no_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let all = [
            Mechanism::ScramSha256,
            Mechanism::ScramSha512,
            Mechanism::Plain,
        ];
        add_user(&path, "alice", user_entry("correct horse", &all, 4096)).unwrap();
        add_user(
            &path,
            "bob",
            user_entry("battery", &[Mechanism::Plain], 4096),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("correct horse") && !text.contains("battery"));
        let store = CredentialStore::open(&path).unwrap();
        let credentials = store.current();
        assert!(credentials.check_plain("alice", "correct horse"));
        assert!(!credentials.check_plain("alice", "battery"));
        assert!(credentials.check_plain("bob", "battery"));
        assert!(!credentials.check_plain("nobody", "battery"));
        assert!(credentials.scram("alice", ScramHash::Sha512).is_some());
        assert!(credentials.scram("bob", ScramHash::Sha256).is_none());

        // Changed on disk: seen by the next lookup. Broken on disk: the last good one stays.
        assert!(remove_user(&path, "bob").unwrap());
        assert!(!store.current().check_plain("bob", "battery"));
        std::fs::write(&path, "[users.x]\nnonsense = 1\n").unwrap();
        assert!(store.current().check_plain("alice", "correct horse"));
    }

    #[test]
    fn errors_name_the_user_and_field() {
        let error = Credentials::parse(
            "[users.carol.scram_sha_256]\nsalt = \"AA==\"\niterations = 10\nstored_key = \"AA==\"\nserver_key = \"AA==\"\n",
        )
        .unwrap_err();
        assert!(
            error.contains("users.carol.scram_sha_256") && error.contains("iterations"),
            "{error}"
        );
        let error = Credentials::parse(
            "[users.dan.plain]\nsalt = \"not base64!\"\niterations = 4096\nhash = \"AA==\"\n",
        )
        .unwrap_err();
        assert!(
            error.contains("users.dan.plain") && error.contains("salt"),
            "{error}"
        );
    }
}
