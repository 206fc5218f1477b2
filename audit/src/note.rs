//! Checkpoints as C2SP signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint): the
//! origin, the number of entries and the RFC 6962 Merkle root of the log, signed with Ed25519.
//!
//! ```text
//! esg.firm.example/audit
//! 1042
//! CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=
//!
//! — esg.firm.example/audit Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
//! ```
//!
//! The signing key file holds `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>`, the
//! verifier key `<name>+<key id hex>+<base64(0x01 || public key)>` (the forms of Go's
//! `golang.org/x/mod/sumdb/note`), key id = `SHA-256(name || 0x0A || 0x01 || public key)[:4]`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// The signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;

/// A checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    /// Entries in the log when it was signed.
    pub size: u64,
    /// RFC 6962 Merkle tree hash of those entries.
    pub root: [u8; 32],
}

impl Checkpoint {
    /// The note text: three lines, each ending in a newline.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }
}

/// Why a note is not a good checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoteError(pub String);

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
        return Err(NoteError(format!(
            "key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

/// The key that signs checkpoints.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A new random key named `name` (a schema-less URL such as `esg.firm.example/audit`).
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut seed);
        let key = SigningKey::from_bytes(&seed);
        seed.zeroize();
        Ok(NoteSigner {
            name: name.to_owned(),
            key,
        })
    }

    /// Reads `PRIVATE+KEY+<name>+<id>+<base64>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| {
            NoteError(format!("not an audit signing key ({why}): expected PRIVATE+KEY+<name>+<id>+<key>, as `esg audit keygen` writes"))
        };
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("no PRIVATE+KEY+ prefix"))?;
        // The name has no '+' and the id is hex; the base64 key may hold '+'.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("too few parts"));
        };
        let mut bytes = B64.decode(key).map_err(|_| bad("the key is not base64"))?;
        if bytes.len() != 33 || bytes[0] != ED25519 {
            bytes.zeroize();
            return Err(bad("not an Ed25519 key"));
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[1..]);
        bytes.zeroize();
        let signer = NoteSigner {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        };
        seed.zeroize();
        check_name(name)?;
        if id != hex(&signer.id()) {
            return Err(bad("its key id does not match the key"));
        }
        Ok(signer)
    }

    /// `PRIVATE+KEY+<name>+<id>+<base64>`, for the key file.
    pub fn to_private_text(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        let text = format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex(&self.id()),
            B64.encode(&bytes)
        );
        bytes.zeroize();
        text
    }

    /// The verifier key to hand to whoever checks checkpoints.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn id(&self) -> [u8; 4] {
        key_id(&self.name, self.key.verifying_key().as_bytes())
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let text = checkpoint.text();
        let signature = self.key.sign(text.as_bytes());
        let mut sig = self.id().to_vec();
        sig.extend_from_slice(&signature.to_bytes());
        format!("{text}\n\u{2014} {} {}\n", self.name, B64.encode(sig))
    }
}

/// The public half: checks checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Reads `<name>+<id>+<base64(0x01 || public key)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| {
            NoteError(format!(
                "not an audit verifier key ({why}): expected <name>+<id>+<key>"
            ))
        };
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("too few parts"));
        };
        let bytes = B64.decode(key).map_err(|_| bad("the key is not base64"))?;
        if bytes.len() != 33 || bytes[0] != ED25519 {
            return Err(bad("not an Ed25519 key"));
        }
        let public: [u8; 32] = bytes[1..].try_into().map_err(|_| bad("length"))?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad("not a valid point"))?;
        if id != hex(&key_id(name, &public)) {
            return Err(bad("its key id does not match the key"));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            key,
        })
    }

    /// `<name>+<id>+<base64>`.
    pub fn to_text(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex(&key_id(&self.name, self.key.as_bytes())),
            B64.encode(bytes)
        )
    }

    /// Parses a signed checkpoint and checks its signature by this key; the checkpoint.
    pub fn open(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let bad = |why: String| NoteError(format!("checkpoint: {why}"));
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures".into()))?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        let public = self.key.as_bytes();
        let want_id = key_id(&self.name, public);
        let mut verified = false;
        for line in signatures.lines().filter(|l| !l.is_empty()) {
            let rest = line.strip_prefix("\u{2014} ").ok_or_else(|| {
                bad(format!(
                    "a signature line does not start with an em dash: {line:?}"
                ))
            })?;
            let (name, sig) = rest
                .split_once(' ')
                .ok_or_else(|| bad("a signature line has no signature".into()))?;
            let sig = B64
                .decode(sig)
                .map_err(|_| bad("a signature is not base64".into()))?;
            if name != self.name || sig.len() < 4 || sig[..4] != want_id {
                continue; // another key's signature: ignored, as the spec says
            }
            let signature = ed25519_dalek::Signature::from_slice(&sig[4..])
                .map_err(|_| bad("the signature is not 64 bytes".into()))?;
            self.key
                .verify(text.as_bytes(), &signature)
                .map_err(|_| bad(format!("the signature of {} does not verify: the checkpoint was changed or signed by another key", self.name)))?;
            verified = true;
        }
        if !verified {
            return Err(bad(format!(
                "no signature by the key {} (signed by another key?)",
                self.name
            )));
        }
        let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
        let [origin, size, root, ..] = lines.as_slice() else {
            return Err(bad("fewer than three lines".into()));
        };
        let size: u64 = size
            .parse()
            .map_err(|_| bad(format!("tree size {size:?} is not a number")))?;
        let root: [u8; 32] = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("the root hash is not 32 bytes of base64".into()))?;
        Ok(Checkpoint {
            origin: (*origin).to_owned(),
            size,
            root,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
