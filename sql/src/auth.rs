//! Users, bearer tokens and roles (`--auth-file`, managed by `treeai auth`).
//!
//! The credentials file is TOML and holds what Postgres holds in `pg_authid`
//! and no more: per user a SCRAM-SHA-256 verifier (salt, iteration count,
//! StoredKey and ServerKey, RFC 5802 / RFC 7677, in Postgres' own
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` notation), per
//! token the SHA-256 of the token. Neither lets anyone log in: a password is
//! never stored, a token is printed once when it is made.
//!
//! ```toml
//! [[users]]
//! name = "grafana"
//! role = "reader"
//! scram = "SCRAM-SHA-256$4096:3q2+7w==$…:…"
//!
//! [[tokens]]
//! name = "field-app"
//! role = "ingest"
//! sha256 = "9f86d0…"
//! ```
//!
//! The running process re-reads the file when it changes (its modification
//! time or size), so `treeai auth add-user` and `remove` take effect on the next
//! login without a restart; a file that no longer parses is refused with an
//! error in the log and the previous contents stay in force.
//!
//! Roles: `reader` runs SQL (Postgres wire, `POST /v1/sql`) and subscribes;
//! `ingest` posts events (`POST /v1/events`); `admin` may do both and calls the
//! admin endpoints (`/v1/admin/…`).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// SCRAM iteration count of new verifiers (Postgres' default).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// What a user or token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// SQL over the views and the lake, live subscriptions.
    Reader,
    /// `POST /v1/events`.
    Ingest,
    /// Everything a reader may do, and the admin endpoints.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Ingest => "ingest",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may act as `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self == needed || (self == Role::Admin && needed == Role::Reader)
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Role, AuthError> {
        match s {
            "reader" => Ok(Role::Reader),
            "ingest" => Ok(Role::Ingest),
            "admin" => Ok(Role::Admin),
            _ => Err(AuthError::Invalid(format!("unknown role {s:?} (reader, ingest, admin)"))),
        }
    }
}

/// Why the credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written (the operator's to fix; retrying may help).
    #[error("credentials file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        source: std::io::Error,
    },
    /// The file or a request is malformed (the operator's to fix; not worth retrying).
    #[error("{0}")]
    Invalid(String),
}

/// One user who logs in with a password (SCRAM-SHA-256).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The user name (Postgres `user`).
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts).
    pub scram: String,
}

/// One bearer token (HTTP `Authorization: Bearer …`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// A name for the token (who holds it), shown in the audit log.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// The credentials file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Users (Postgres wire protocol).
    #[serde(default)]
    pub users: Vec<UserEntry>,
    /// Bearer tokens (HTTP).
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

/// A parsed SCRAM-SHA-256 verifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl Verifier {
    /// The verifier of `password` with a fresh random salt.
    pub fn new(password: &str) -> Result<Verifier, AuthError> {
        let mut salt = vec![0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| AuthError::Invalid("no random numbers from the system".into()))?;
        Ok(Verifier::with_salt(password, salt, SCRAM_ITERATIONS))
    }

    /// The verifier of `password` with `salt` (RFC 5802 §3; the password SASLprep'd as libpq does).
    pub fn with_salt(password: &str, salt: Vec<u8>, iterations: u32) -> Verifier {
        let prepared = stringprep::saslprep(password).map(|p| p.into_owned()).unwrap_or_else(|_| password.to_owned());
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN),
            &salt,
            prepared.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key).as_ref().to_vec();
        let server_key = hmac_sha256(&salted, b"Server Key");
        Verifier { iterations, salt, stored_key, server_key }
    }

    /// Parses Postgres' notation.
    pub fn parse(s: &str) -> Result<Verifier, AuthError> {
        let bad = || AuthError::Invalid(format!("not a SCRAM-SHA-256 verifier: {s:?}"));
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let b64 = |p: &str| STANDARD.decode(p).map_err(|_| bad());
        let v = Verifier {
            iterations: iterations.parse().map_err(|_| bad())?,
            salt: b64(salt)?,
            stored_key: b64(stored)?,
            server_key: b64(server)?,
        };
        if v.iterations == 0 || v.stored_key.len() != 32 || v.server_key.len() != 32 || v.salt.is_empty() {
            return Err(bad());
        }
        Ok(v)
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(&self.stored_key),
            STANDARD.encode(&self.server_key)
        )
    }
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg).as_ref().to_vec()
}

fn sha256_hex(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new bearer token (`treeai_` and 32 random bytes) and the hash the file keeps.
pub fn new_token() -> Result<(String, String), AuthError> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Invalid("no random numbers from the system".into()))?;
    let token = format!("treeai_{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = sha256_hex(token.as_bytes());
    Ok((token, hash))
}

impl AuthFile {
    /// Reads the file; a missing file is empty (`treeai auth` creates it).
    pub fn load(path: &Path) -> Result<AuthFile, AuthError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AuthFile::default()),
            Err(source) => return Err(AuthError::Io { path: path.display().to_string(), source }),
        };
        let file: AuthFile = toml::from_str(&text)
            .map_err(|e| AuthError::Invalid(format!("credentials file {}: {e}", path.display())))?;
        file.check().map_err(|e| AuthError::Invalid(format!("credentials file {}: {e}", path.display())))?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for u in &self.users {
            Verifier::parse(&u.scram).map_err(|e| format!("user {:?}: {e}", u.name))?;
            if !names.insert(("user", u.name.as_str())) {
                return Err(format!("user {:?} appears twice", u.name));
            }
        }
        for t in &self.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("token {:?}: sha256 is not 64 hex digits", t.name));
            }
            if !names.insert(("token", t.name.as_str())) {
                return Err(format!("token {:?} appears twice", t.name));
            }
        }
        Ok(())
    }

    /// Writes the file atomically (a temporary file renamed over it), readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        let io = |source| AuthError::Io { path: path.display().to_string(), source };
        let mut text = String::from(
            "# treeai credentials, written by `treeai auth`: SCRAM-SHA-256 verifiers and token hashes.\n\
             # It holds no password and no token; still, keep it private.\n\n",
        );
        text.push_str(&toml::to_string(self).map_err(|e| AuthError::Invalid(e.to_string()))?);
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Adds or replaces user `name`.
    pub fn set_user(&mut self, name: &str, role: Role, password: &str) -> Result<(), AuthError> {
        check_name(name)?;
        if password.is_empty() {
            return Err(AuthError::Invalid("the password is empty".into()));
        }
        let scram = Verifier::new(password)?.to_string();
        self.users.retain(|u| u.name != name);
        self.users.push(UserEntry { name: name.into(), role, scram });
        Ok(())
    }

    /// Adds (or replaces) token `name`; returns the token, to be shown once.
    pub fn add_token(&mut self, name: &str, role: Role) -> Result<String, AuthError> {
        check_name(name)?;
        let (token, sha256) = new_token()?;
        self.tokens.retain(|t| t.name != name);
        self.tokens.push(TokenEntry { name: name.into(), role, sha256 });
        Ok(token)
    }

    /// Removes the user and the token called `name`; returns how many entries went.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.users.len() + self.tokens.len();
        self.users.retain(|u| u.name != name);
        self.tokens.retain(|t| t.name != name);
        before - self.users.len() - self.tokens.len()
    }
}

fn check_name(name: &str) -> Result<(), AuthError> {
    if name.is_empty() || name.len() > 63 || name.chars().any(|c| c.is_control() || c == '"') {
        return Err(AuthError::Invalid(format!(
            "{name:?}: a name is 1 to 63 characters, no quotes or control characters"
        )));
    }
    Ok(())
}

/// Who a request or a connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// User or token name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    users: HashMap<String, (Role, Verifier)>,
    tokens: HashMap<String, Principal>,
}

impl Loaded {
    fn from(file: &AuthFile, stamp: Option<(SystemTime, u64)>) -> Loaded {
        Loaded {
            stamp,
            users: file
                .users
                .iter()
                .filter_map(|u| Verifier::parse(&u.scram).ok().map(|v| (u.name.clone(), (u.role, v))))
                .collect(),
            tokens: file
                .tokens
                .iter()
                .map(|t| (t.sha256.to_ascii_lowercase(), Principal { name: t.name.clone(), role: t.role }))
                .collect(),
        }
    }
}

/// The credentials of a running process: the file, re-read when it changes.
pub struct Credentials {
    path: PathBuf,
    loaded: RwLock<Arc<Loaded>>,
    /// Secret of this process for the mock verifiers of unknown users (so a login
    /// attempt does not tell whether a user exists).
    mock_secret: [u8; 32],
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Credentials {
    /// Loads `path` (it must exist and parse: a typo must not open the doors).
    pub fn open(path: &Path) -> Result<Arc<Credentials>, AuthError> {
        if !path.exists() {
            return Err(AuthError::Invalid(format!(
                "credentials file {} does not exist (create it with `treeai auth add-user NAME --role R --file {}`)",
                path.display(),
                path.display()
            )));
        }
        let st = stamp(path);
        let file = AuthFile::load(path)?;
        let mut mock_secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut mock_secret)
            .map_err(|_| AuthError::Invalid("no random numbers from the system".into()))?;
        Ok(Arc::new(Credentials {
            path: path.to_owned(),
            loaded: RwLock::new(Arc::new(Loaded::from(&file, st))),
            mock_secret,
        }))
    }

    /// The current contents, re-read if the file changed.
    fn current(&self) -> Arc<Loaded> {
        let now = stamp(&self.path);
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner()).clone();
        if now == loaded.stamp {
            return loaded;
        }
        let fresh = match AuthFile::load(&self.path) {
            Ok(file) => {
                tracing::info!("credentials file {} re-read", self.path.display());
                Arc::new(Loaded::from(&file, now))
            }
            Err(e) => {
                tracing::error!("{e}; the previous credentials stay in force");
                Arc::new(Loaded { stamp: now, users: loaded.users.clone(), tokens: loaded.tokens.clone() })
            }
        };
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        fresh
    }

    /// User `name`'s role and verifier.
    pub fn user(&self, name: &str) -> Option<(Role, Verifier)> {
        self.current().users.get(name).cloned()
    }

    /// A verifier no password matches, the same for the same name within this process.
    pub fn mock_verifier(&self, name: &str) -> Verifier {
        let salt = hmac_sha256(&self.mock_secret, name.as_bytes())[..16].to_vec();
        let key = hmac_sha256(&self.mock_secret, b"mock keys");
        Verifier { iterations: SCRAM_ITERATIONS, salt, stored_key: key.clone(), server_key: key }
    }

    /// The holder of bearer token `token`.
    pub fn token(&self, token: &str) -> Option<Principal> {
        self.current().tokens.get(&sha256_hex(token.as_bytes())).cloned()
    }
}

/// The server side of one SCRAM-SHA-256 exchange (RFC 5802, without channel
/// binding: the server offers `SCRAM-SHA-256` only, and accepts clients that
/// could bind (`y`) or cannot (`n`)).
pub struct ScramServer {
    verifier: Verifier,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

/// The outcome of the client's final message.
pub enum ScramOutcome {
    /// The proof matched: send this server-final message.
    Ok(String),
    /// The proof did not match.
    WrongPassword,
}

impl ScramServer {
    /// Takes the client-first message; returns the exchange and the server-first message.
    pub fn start(client_first: &[u8], verifier: Verifier) -> Result<(ScramServer, String), AuthError> {
        let bad = |what: &str| AuthError::Invalid(format!("SCRAM client-first message: {what}"));
        let msg = std::str::from_utf8(client_first).map_err(|_| bad("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(bad("channel binding was not offered")),
            _ => return Err(bad("bad channel binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(bad("bad authzid"));
        }
        let gs2_header = format!("{flag},{authzid},");
        // client-first-message-bare: [m=…,] n=user, r=nonce [,ext]
        // (The SCRAM user name is ignored, as Postgres does: the startup message's counts.)
        if bare.starts_with("m=") {
            return Err(bad("mandatory extensions are not supported"));
        }
        let mut parts = bare.split(',');
        let client_nonce = parts
            .find_map(|p| p.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or_else(|| bad("no nonce"))?;
        let mut server_nonce = [0u8; 18];
        ring::rand::SystemRandom::new().fill(&mut server_nonce).map_err(|_| bad("no random numbers"))?;
        let nonce = format!("{client_nonce}{}", STANDARD.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={}", STANDARD.encode(&verifier.salt), verifier.iterations);
        Ok((
            ScramServer {
                verifier,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                gs2_header,
                nonce,
            },
            server_first,
        ))
    }

    /// Takes the client-final message and checks its proof.
    pub fn finish(&self, client_final: &[u8]) -> Result<ScramOutcome, AuthError> {
        let bad = |what: &str| AuthError::Invalid(format!("SCRAM client-final message: {what}"));
        let msg = std::str::from_utf8(client_final).map_err(|_| bad("not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or_else(|| bad("no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for part in without_proof.split(',') {
            if let Some(c) = part.strip_prefix("c=") {
                binding = Some(c);
            } else if let Some(r) = part.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let binding = STANDARD.decode(binding.ok_or_else(|| bad("no channel binding"))?).map_err(|_| bad("bad c="))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(bad("channel binding does not match the GS2 header"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(bad("nonce does not match"));
        }
        let proof = STANDARD.decode(proof).map_err(|_| bad("bad proof"))?;
        if proof.len() != 32 {
            return Ok(ScramOutcome::WrongPassword);
        }
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        let stored = digest::digest(&digest::SHA256, &client_key);
        // Compared in constant time.
        let differ = stored.as_ref().iter().zip(&self.verifier.stored_key).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ != 0 || self.verifier.stored_key.len() != stored.as_ref().len() {
            return Ok(ScramOutcome::WrongPassword);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(ScramOutcome::Ok(format!("v={}", STANDARD.encode(server_signature))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3's example exchange, checked against our server with the
    /// verifier derived from the example's password, salt and iteration count.
    #[test]
    fn rfc7677_example_exchange() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = Verifier::with_salt("pencil", salt, 4096);
        let client_first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let (mut server, _) = ScramServer::start(client_first, verifier.clone()).unwrap();
        // Replay the RFC's server nonce and message.
        server.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        server.server_first = format!("r={},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", server.nonce);
        let client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        match server.finish(client_final).unwrap() {
            ScramOutcome::Ok(v) => assert_eq!(v, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            ScramOutcome::WrongPassword => panic!("the RFC's proof was refused"),
        }
        // Another password's verifier refuses the same proof.
        let (mut other, _) =
            ScramServer::start(client_first, Verifier::with_salt("pencil2", server.verifier.salt.clone(), 4096))
                .unwrap();
        other.nonce.clone_from(&server.nonce);
        other.server_first.clone_from(&server.server_first);
        assert!(matches!(other.finish(client_final).unwrap(), ScramOutcome::WrongPassword));
        // A tampered nonce is a protocol error.
        assert!(server.finish(b"c=biws,r=other,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").is_err());
    }

    #[test]
    fn verifier_round_trips_and_file_keeps_no_secret() {
        let dir = std::env::temp_dir().join(format!("treeai-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.toml");
        let mut f = AuthFile::default();
        f.set_user("ana", Role::Reader, "s3cret-pässword").unwrap();
        let token = f.add_token("app", Role::Ingest).unwrap();
        f.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret") && !text.contains(&token), "{text}");
        let creds = Credentials::open(&path).unwrap();
        let (role, v) = creds.user("ana").unwrap();
        assert_eq!(role, Role::Reader);
        assert_eq!(Verifier::parse(&v.to_string()).unwrap(), v);
        assert_eq!(creds.token(&token), Some(Principal { name: "app".into(), role: Role::Ingest }));
        assert_eq!(creds.token("treeai_wrong"), None);
        // Removing takes effect on the running credentials (the file is re-read).
        let mut f = AuthFile::load(&path).unwrap();
        assert_eq!(f.remove("app"), 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        f.save(&path).unwrap();
        assert_eq!(creds.token(&token), None);
        assert!(creds.user("ana").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
