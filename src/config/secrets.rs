//! The configuration's security types: the SASL [`Mechanism`] names a config may give, and
//! [`Secret`], which keeps passwords out of logs and answers: no secret (password, SCRAM key,
//! token) is ever formatted by `Debug`, `Display` or `Serialize`.

use serde::{Deserialize, Serialize};

/// A SASL mechanism kshift speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha512,
        Mechanism::ScramSha256,
        Mechanism::Plain,
    ];

    /// The name on the wire (SaslHandshake).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A password or other secret: readable through [`Secret::expose`] only; `Debug`,
/// `Display` and `Serialize` print `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    /// A fingerprint keyed with a random per-process key: two serializations of one
    /// configuration compare equal (so a changed password is noticed), but nothing that
    /// leaves the process can be checked against a guessed password.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use hmac::Mac;
        static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            let mut key = [0u8; 32];
            if getrandom::fill(&mut key).is_err() {
                // No OS randomness: refuse rather than print a guessable fingerprint.
                tracing::error!("the operating system's random source failed");
                std::process::abort();
            }
            key
        });
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
            return serializer.serialize_str("<redacted>");
        };
        mac.update(self.0.as_bytes());
        let mac = mac.finalize().into_bytes();
        let fingerprint: String = mac.iter().take(8).map(|b| format!("{b:02x}")).collect();
        serializer.serialize_str(&format!("<redacted {fingerprint}>"))
    }
}
