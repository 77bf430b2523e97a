//! STAMP authenticated mode: the mode of a role and its keys, for `ping`, `reflect` and the
//! agent alike. The one place that reads key files and decides which keys sign and verify.
//!
//! - A key file holds the key in hex (whitespace ignored), at least [`MIN_KEY_LEN`] octets.
//! - The current key signs and verifies; the optional next key also verifies. Rotation without
//!   a gap: add the new key as next everywhere, make it current (the old one next) everywhere,
//!   then drop the old one. There is no key id on the wire: verification tries current, then
//!   next.
//! - The files are read again when they change ([`KeyRing::watch`]: a thread polls their
//!   metadata, which follows the symlink a Kubernetes Secret volume swaps), so rotation needs no
//!   restart. A file that turns unreadable or bad keeps the keys in use (logged, never the key).
//! - Keys never appear in logs or errors ([`Key`]'s `Debug` prints only its length).
use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, RwLock, Weak},
    time::{Duration, SystemTime},
};

use tracing::{info, warn};

use crate::wire::auth::{base_hmac_ok, hmac_tlv_ok};

/// Fewest key octets accepted (128 bits: the strength of the truncated HMAC).
pub const MIN_KEY_LEN: usize = 16;
/// Most key octets accepted: a key file is a key, not a log.
pub const MAX_KEY_LEN: usize = 1024;
/// How often the key files' metadata is polled.
pub const POLL: Duration = Duration::from_secs(2);

/// What a role does about authenticated mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Open (unauthenticated) mode only.
    #[default]
    Off,
    /// Sender: authenticated requests; open replies accepted and counted. Reflector: answers
    /// both modes, an authenticated request with an authenticated reply.
    Optional,
    /// Sender: replies that do not verify are rejected. Reflector: requests that do not verify
    /// are refused.
    Required,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Optional => "optional",
            Mode::Required => "required",
        }
    }

    pub fn is_on(self) -> bool {
        self != Mode::Off
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Mode::Off),
            "optional" => Ok(Mode::Optional),
            "required" => Ok(Mode::Required),
            _ => Err(format!(
                "`{s}` is not a mode: expected off, optional or required"
            )),
        }
    }
}

/// Why a key file cannot be used. Names the setting; never shows key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{setting}: cannot read {path}: {reason}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{setting}: {path} is not a hex key (hex digits only, whitespace ignored)")]
    NotHex {
        setting: &'static str,
        path: PathBuf,
    },
    #[error(
        "{setting}: {path} holds {len} key octets; at least {MIN_KEY_LEN} and at most \
         {MAX_KEY_LEN} are needed (e.g. `openssl rand -hex 32`)"
    )]
    Length {
        setting: &'static str,
        path: PathBuf,
        len: usize,
    },
    #[error("{setting} is required with authenticated mode {mode}")]
    Missing { setting: &'static str, mode: Mode },
}

/// Key material. Its `Debug` shows the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    /// Parses hex key text; `setting` and `path` name it in errors.
    pub fn parse(text: &str, setting: &'static str, path: &Path) -> Result<Key, KeyError> {
        let hex_text: String = text.split_whitespace().collect();
        let bytes = hex::decode(&hex_text).map_err(|_| KeyError::NotHex {
            setting,
            path: path.to_path_buf(),
        })?;
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
            return Err(KeyError::Length {
                setting,
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        Ok(Key(bytes))
    }

    /// Reads and parses a key file.
    pub fn read(path: &Path, setting: &'static str) -> Result<Key, KeyError> {
        let meta = std::fs::metadata(path).map_err(|e| read_err(setting, path, &e))?;
        // Bounded read: hex of the largest key plus generous whitespace.
        if meta.len() > (4 * MAX_KEY_LEN) as u64 {
            return Err(KeyError::Length {
                setting,
                path: path.to_path_buf(),
                len: (meta.len() / 2) as usize,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| read_err(setting, path, &e))?;
        Key::parse(&text, setting, path)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

fn read_err(setting: &'static str, path: &Path, e: &std::io::Error) -> KeyError {
    KeyError::Read {
        setting,
        path: path.to_path_buf(),
        reason: e.kind().to_string(),
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} octets)", self.0.len())
    }
}

/// The keys in use: current (signs, verifies) and next (verifies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub current: Key,
    pub next: Option<Key>,
}

impl Keys {
    /// The first of current, next that `ok` accepts.
    fn first_ok(&self, ok: impl Fn(&[u8]) -> bool) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(self.next.as_ref())
            .find(|k| ok(k.bytes()))
    }
}

/// Where the keys come from, with the names of the settings (for errors).
#[derive(Clone, Debug)]
pub struct KeyFiles {
    pub current: PathBuf,
    pub next: Option<PathBuf>,
    pub current_setting: &'static str,
    pub next_setting: &'static str,
}

impl KeyFiles {
    pub fn load(&self) -> Result<Keys, KeyError> {
        Ok(Keys {
            current: Key::read(&self.current, self.current_setting)?,
            next: self
                .next
                .as_deref()
                .map(|p| Key::read(p, self.next_setting))
                .transpose()?,
        })
    }

    /// What tells that a file changed: for each, its (modified, length, inode) after
    /// following symlinks, or `None` while unreadable.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64, u64)>> {
        use std::os::unix::fs::MetadataExt as _;
        std::iter::once(&self.current)
            .chain(self.next.as_ref())
            .map(|p| {
                std::fs::metadata(p).ok().map(|m| {
                    (
                        m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        m.len(),
                        m.ino(),
                    )
                })
            })
            .collect()
    }
}

/// The keys of a process, shared by its sender and reflector, replaced when the files change.
#[derive(Debug)]
pub struct KeyRing {
    files: KeyFiles,
    keys: RwLock<Keys>,
}

/// What verifying a packet found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// The base HMAC verified under this key (current or next); with the RFC 8972 HMAC TLV's
    /// verdict under the same key when the packet carries one.
    Ok { tlvs_ok: Option<bool> },
    /// Too short for an authenticated packet, or no key verified it.
    Bad,
}

impl KeyRing {
    /// Reads the files once (an error names the setting).
    pub fn load(files: KeyFiles) -> Result<Arc<KeyRing>, KeyError> {
        let keys = files.load()?;
        Ok(Arc::new(KeyRing {
            files,
            keys: RwLock::new(keys),
        }))
    }

    /// Keys given directly (tests).
    pub fn fixed(keys: Keys) -> Arc<KeyRing> {
        Arc::new(KeyRing {
            files: KeyFiles {
                current: PathBuf::new(),
                next: None,
                current_setting: "",
                next_setting: "",
            },
            keys: RwLock::new(keys),
        })
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `encode` signed with the current key.
    pub fn sign(&self, encode: impl FnOnce(&[u8])) {
        encode(self.keys().current.bytes());
    }

    /// Verifies an authenticated packet (base HMAC, then the HMAC TLV if any) with the current
    /// key, then the next.
    pub fn verify(&self, packet: &[u8]) -> Verified {
        let keys = self.keys();
        match keys.first_ok(|k| base_hmac_ok(packet, k)) {
            Some(k) => Verified::Ok {
                tlvs_ok: hmac_tlv_ok(packet, k.bytes()),
            },
            None => Verified::Bad,
        }
    }

    /// Reads the files again; keeps the keys in use when they cannot be read. True when the
    /// keys changed.
    pub fn reload(&self) -> bool {
        match self.files.load() {
            Ok(k) => {
                let mut cur = self.keys.write().unwrap_or_else(|p| p.into_inner());
                let changed = *cur != k;
                *cur = k;
                changed
            }
            Err(e) => {
                warn!("STAMP keys not reloaded, the keys in use stay: {e}");
                false
            }
        }
    }

    /// Polls the key files' metadata every `every` on a thread of its own (never a probing
    /// one) and reloads on a change. The thread ends when the ring is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak: Weak<KeyRing> = Arc::downgrade(self);
        let mut last = self.files.stamp();
        let spawned = std::thread::Builder::new()
            .name("stamp-keys".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(ring) = weak.upgrade() else {
                        return;
                    };
                    let now = ring.files.stamp();
                    if now != last {
                        last = now;
                        if ring.reload() {
                            info!("STAMP keys reloaded from their files");
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            warn!("STAMP key files will not be watched: {e}");
        }
    }
}

/// A role's authenticated-mode setting: the mode and, unless off, its keys.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub mode: Mode,
    pub keys: Option<Arc<KeyRing>>,
}

impl Auth {
    pub const OFF: Auth = Auth {
        mode: Mode::Off,
        keys: None,
    };

    /// The setting for `mode`, reading `files` unless off (then they are not needed).
    /// `key_setting` names the current-key setting when it is missing.
    pub fn new(
        mode: Mode,
        files: Option<KeyFiles>,
        key_setting: &'static str,
    ) -> Result<Auth, KeyError> {
        if !mode.is_on() {
            return Ok(Auth::OFF);
        }
        let files = files.ok_or(KeyError::Missing {
            setting: key_setting,
            mode,
        })?;
        Ok(Auth {
            mode,
            keys: Some(KeyRing::load(files)?),
        })
    }

    /// The keys when authenticated mode is on.
    pub fn ring(&self) -> Option<&Arc<KeyRing>> {
        self.keys.as_ref().filter(|_| self.mode.is_on())
    }
}

#[cfg(test)]
mod tests;
