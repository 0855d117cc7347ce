//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka uses them: the server
//! side that terminates clients' SASL, the client side kshift authenticates to backends
//! with, and the stored form of a password (salt, iterations, stored key, server key).
//!
//! Invariants:
//! - The server never needs, sees or keeps a password: it checks a client's proof against
//!   the stored key, and proves itself with the server key.
//! - An unknown user runs the same exchange as a known one with a random salt and fails at
//!   the end, so a client cannot tell which user names exist.
//! - Every message from the peer is parsed without panicking; anything unexpected is a
//!   [`ScramError`], never an index out of bounds.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use super::{constant_time_eq, random_bytes, Mechanism};

/// Fewest PBKDF2 iterations kshift accepts in a stored credential (Kafka's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most PBKDF2 iterations kshift accepts, from a credentials file or from a backend's
/// challenge: more would let a peer make kshift burn seconds of CPU per connection.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("invalid SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("the server's signature does not match: it does not know this password")]
    ServerNotAuthenticated,
    #[error("the server refused: {0}")]
    ServerError(String),
}

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    /// The hash of a SCRAM mechanism; `None` for PLAIN.
    pub fn of(mechanism: Mechanism) -> Option<ScramHash> {
        match mechanism {
            Mechanism::Plain => None,
            Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha512 => Some(ScramHash::Sha512),
        }
    }

    /// The SASL mechanism name (`SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The Kafka protocol's number for this mechanism (AlterUserScramCredentials).
    pub fn kafka_type(self) -> i8 {
        match self {
            ScramHash::Sha256 => 1,
            ScramHash::Sha512 => 2,
        }
    }

    fn output_len(self) -> usize {
        match self {
            ScramHash::Sha256 => 32,
            ScramHash::Sha512 => 64,
        }
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
            ScramHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length, so `new_from_slice` cannot fail; an empty result
        // would only make a comparison fail, never pass.
        match self {
            ScramHash::Sha256 => Hmac::<Sha256>::new_from_slice(key)
                .map(|mac| mac.chain_update(data).finalize().into_bytes().to_vec())
                .unwrap_or_default(),
            ScramHash::Sha512 => Hmac::<Sha512>::new_from_slice(key)
                .map(|mac| mac.chain_update(data).finalize().into_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    /// `Hi(password, salt, iterations)`: PBKDF2 with HMAC of this hash.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
            }
            ScramHash::Sha512 => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out)
            }
        }
        out
    }
}

/// What a server keeps of a SCRAM password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl StoredCredential {
    /// Derives the stored form of `password` with a fresh random salt.
    pub fn new(hash: ScramHash, password: &str, iterations: u32) -> StoredCredential {
        StoredCredential::derive(hash, password.as_bytes(), &random_bytes(24), iterations)
    }

    /// Derives the stored form of `password` with the given salt.
    pub fn derive(
        hash: ScramHash,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> StoredCredential {
        let salted = hash.salted_password(password, salt, iterations);
        StoredCredential::from_salted_password(hash, &salted, salt, iterations)
    }

    fn from_salted_password(
        hash: ScramHash,
        salted: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> StoredCredential {
        let client_key = hash.hmac(salted, b"Client Key");
        StoredCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.hash(&client_key),
            server_key: hash.hmac(salted, b"Server Key"),
        }
    }
}

/// Decodes a SCRAM `saslname` (`=2C` is `,`, `=3D` is `=`).
fn decode_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        match escape {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn encode_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// `key=value` attribute `key` of a SCRAM message's comma-separated parts.
fn attribute<'a>(parts: &[&'a str], key: char) -> Option<&'a str> {
    parts.iter().find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// A fresh nonce: printable, without commas.
fn nonce() -> String {
    BASE64.encode(random_bytes(24))
}

/// The server side of one exchange.
#[derive(Debug)]
pub struct ScramServer {
    hash: ScramHash,
    state: ServerState,
}

#[derive(Debug)]
enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal(Box<ClientFinalExpected>),
    Finished,
}

/// What the server remembers between its first message and the client's final one.
#[derive(Debug)]
struct ClientFinalExpected {
    user: String,
    known: bool,
    credential: StoredCredential,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    pub fn new(hash: ScramHash) -> ScramServer {
        ScramServer {
            hash,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Answers the client-first message with the server-first message. `lookup` finds
    /// the stored credential of a user name.
    pub fn client_first(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<StoredCredential>,
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::AwaitingClientFirst) {
            return Err(ScramError::Malformed("unexpected client-first message"));
        }
        self.state = ServerState::Finished;
        let message =
            std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header = cbind-flag "," [authzid] ","
        let mut split = message.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (split.next(), split.next(), split.next())
        else {
            return Err(ScramError::Malformed("no GS2 header"));
        };
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => {
                return Err(ScramError::Unsupported("channel binding is not supported"))
            }
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let parts: Vec<&str> = bare.split(',').collect();
        if parts.first().is_some_and(|p| p.starts_with("m=")) {
            return Err(ScramError::Unsupported(
                "mandatory extensions are not supported",
            ));
        }
        let user = decode_name(
            parts
                .first()
                .and_then(|p| p.strip_prefix("n="))
                .ok_or(ScramError::Malformed("no user name"))?,
        )?;
        let client_nonce = parts
            .get(1)
            .and_then(|p| p.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        if let Some(authzid) = authzid.strip_prefix("a=") {
            if decode_name(authzid)? != user {
                return Err(ScramError::InvalidCredentials);
            }
        } else if !authzid.is_empty() {
            return Err(ScramError::Malformed("bad authorization identity"));
        }
        // Kafka's delegation-token extension: kshift holds no tokens.
        if parts.iter().skip(2).any(|p| p.starts_with("tokenauth=")) {
            return Err(ScramError::Unsupported(
                "delegation tokens are not supported",
            ));
        }
        let (known, credential) = match lookup(&user) {
            Some(credential) => (true, credential),
            None => (
                false,
                StoredCredential::derive(
                    self.hash,
                    &random_bytes(16),
                    &random_bytes(24),
                    MIN_ITERATIONS,
                ),
            ),
        };
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        self.state = ServerState::AwaitingClientFinal(Box::new(ClientFinalExpected {
            user,
            known,
            credential,
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        }));
        Ok(server_first.into_bytes())
    }

    /// Checks the client-final message; on success returns the user name and the
    /// server-final message.
    pub fn client_final(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), ScramError> {
        let ServerState::AwaitingClientFinal(expected) =
            std::mem::replace(&mut self.state, ServerState::Finished)
        else {
            return Err(ScramError::Malformed("unexpected client-final message"));
        };
        let ClientFinalExpected {
            user,
            known,
            credential,
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = *expected;
        let message =
            std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let parts: Vec<&str> = without_proof.split(',').collect();
        let binding = attribute(&parts, 'c').ok_or(ScramError::Malformed("no channel binding"))?;
        if BASE64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        if attribute(&parts, 'r') != Some(nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = self
            .hash
            .hmac(&credential.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(ScramError::InvalidCredentials);
        }
        let client_key = xor(&proof, &client_signature);
        let matches = constant_time_eq(&self.hash.hash(&client_key), &credential.stored_key);
        if !(matches && known) {
            return Err(ScramError::InvalidCredentials);
        }
        let server_signature = self
            .hash
            .hmac(&credential.server_key, auth_message.as_bytes());
        Ok((
            user,
            format!("v={}", BASE64.encode(server_signature)).into_bytes(),
        ))
    }
}

/// The client side of one exchange.
pub struct ScramClient {
    hash: ScramHash,
    password: Vec<u8>,
    client_first_bare: String,
    client_nonce: String,
    /// The server signature the server-final message must carry.
    expected_server_signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    pub fn new(hash: ScramHash, user: &str, password: &str) -> ScramClient {
        ScramClient::with_nonce(hash, user, password, nonce())
    }

    fn with_nonce(
        hash: ScramHash,
        user: &str,
        password: &str,
        client_nonce: String,
    ) -> ScramClient {
        ScramClient {
            hash,
            password: password.as_bytes().to_vec(),
            client_first_bare: format!("n={},r={client_nonce}", encode_name(user)),
            client_nonce,
            expected_server_signature: None,
        }
    }

    /// The client-first message.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Answers the server-first message with the client-final message (with the proof).
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::Malformed("server-first is not UTF-8"))?;
        let parts: Vec<&str> = server_first.split(',').collect();
        if let Some(error) = attribute(&parts, 'e') {
            return Err(ScramError::ServerError(error.to_string()));
        }
        let nonce = attribute(&parts, 'r').ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::Malformed(
                "the server's nonce does not extend ours",
            ));
        }
        let salt = attribute(&parts, 's')
            .and_then(|s| BASE64.decode(s).ok())
            .ok_or(ScramError::Malformed("no salt"))?;
        let iterations: u32 = attribute(&parts, 'i')
            .and_then(|i| i.parse().ok())
            .ok_or(ScramError::Malformed("no iteration count"))?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Malformed("iteration count out of range"));
        }
        let salted = self.hash.salted_password(&self.password, &salt, iterations);
        let credential =
            StoredCredential::from_salted_password(self.hash, &salted, &salt, iterations);
        let client_key = self.hash.hmac(&salted, b"Client Key");
        // "biws" is base64 of the GS2 header "n,,".
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = self
            .hash
            .hmac(&credential.stored_key, auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        self.expected_server_signature = Some(
            self.hash
                .hmac(&credential.server_key, auth_message.as_bytes()),
        );
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server proves it knows the credential.
    pub fn server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let server_final = std::str::from_utf8(server_final)
            .map_err(|_| ScramError::Malformed("server-final is not UTF-8"))?;
        let parts: Vec<&str> = server_final.split(',').collect();
        if let Some(error) = attribute(&parts, 'e') {
            return Err(ScramError::ServerError(error.to_string()));
        }
        let signature = attribute(&parts, 'v')
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or(ScramError::Malformed("no server signature"))?;
        match &self.expected_server_signature {
            Some(expected) if constant_time_eq(expected, &signature) => Ok(()),
            _ => Err(ScramError::ServerNotAuthenticated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil", 4096 iterations.
    #[test]
    fn rfc7677_example_exchange() {
        let mut client = ScramClient::with_nonce(
            ScramHash::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO".to_string(),
        );
        assert_eq!(client.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = client.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert_eq!(
            client.server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::ServerNotAuthenticated)
        );
    }

    fn exchange(
        hash: ScramHash,
        stored_password: &str,
        password: &str,
    ) -> Result<String, ScramError> {
        let stored = StoredCredential::new(hash, stored_password, MIN_ITERATIONS);
        let mut client = ScramClient::new(hash, "al,i=ce", password);
        let mut server = ScramServer::new(hash);
        let server_first = server.client_first(&client.client_first(), |user| {
            (user == "al,i=ce").then(|| stored.clone())
        })?;
        let client_final = client.client_final(&server_first)?;
        let (user, server_final) = server.client_final(&client_final)?;
        client.server_final(&server_final)?;
        Ok(user)
    }

    #[test]
    fn server_and_client_agree_on_both_hashes() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            assert_eq!(exchange(hash, "s3cret", "s3cret").unwrap(), "al,i=ce");
            assert_eq!(
                exchange(hash, "s3cret", "wrong"),
                Err(ScramError::InvalidCredentials)
            );
        }
    }

    #[test]
    fn unknown_user_fails_only_at_the_end() {
        let mut client = ScramClient::new(ScramHash::Sha256, "nobody", "x");
        let mut server = ScramServer::new(ScramHash::Sha256);
        let server_first = server
            .client_first(&client.client_first(), |_| None)
            .unwrap();
        let client_final = client.client_final(&server_first).unwrap();
        assert_eq!(
            server.client_final(&client_final),
            Err(ScramError::InvalidCredentials)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for message in [
            &b""[..],
            b"n",
            b"n,,",
            b"n,,n=",
            b"n,,n=a=",
            b"p=tls-unique,,n=a,r=x",
            b"n,,m=x,n=a,r=b",
            b"\xff\xfe",
            b"n,,n=a,r=b,tokenauth=true",
        ] {
            let mut server = ScramServer::new(ScramHash::Sha512);
            assert!(
                server.client_first(message, |_| None).is_err(),
                "{message:?}"
            );
        }
        let mut server = ScramServer::new(ScramHash::Sha256);
        server.client_first(b"n,,n=a,r=b", |_| None).unwrap();
        assert!(server.client_final(b"c=biws,r=b").is_err());
        let mut client = ScramClient::new(ScramHash::Sha256, "a", "b");
        assert!(client.client_final(b"r=other,s=AAAA,i=4096").is_err());
        assert!(client.client_final(b"e=unknown-user").is_err());
    }
}
