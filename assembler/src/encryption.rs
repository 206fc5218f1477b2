//! Encryption of the output files at rest with age (X25519 recipients).
//!
//! With [`Protection::Age`] every output file is written as `<name>.age`: the bytes go through
//! age's streaming encryption on their way into the temporary file, so no plaintext of an output
//! touches the disk at any moment, a killed writer leaves only ciphertext (and a temporary name),
//! and memory stays at age's 64 KiB chunk whatever the size of the file. Any one of the recipients'
//! identities decrypts it (`age -d -i KEY FILE.age`); the job itself holds no private key, so it
//! never reads an encrypted output back: a re-run rebuilds the day's files from its own state.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::str::FromStr;
use std::sync::Arc;

/// How the output files are kept at rest.
#[derive(Clone, Default)]
pub enum Protection {
    /// Plaintext files (the job says so at start-up).
    #[default]
    Plaintext,
    /// age-encrypted to every recipient (at least one).
    Age(Arc<[age::x25519::Recipient]>),
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::Plaintext => f.write_str("Plaintext"),
            Protection::Age(r) => write!(f, "Age({} recipients)", r.len()),
        }
    }
}

/// A recipient that does not parse, or no recipient at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error("no recipient: give at least one age X25519 recipient (age1…)")]
    Missing,
    #[error("recipient {index} is not an age X25519 recipient (age1… as `age-keygen -y` prints it): {reason}")]
    Invalid { index: usize, reason: String },
}

/// Suffix of an encrypted output's name.
pub const AGE_SUFFIX: &str = ".age";

impl Protection {
    /// Encryption to `recipients` (each `age1…`); refuses an empty list and names the first that
    /// does not parse (counting from 1).
    pub fn age<S: AsRef<str>>(recipients: &[S]) -> Result<Protection, RecipientError> {
        if recipients.is_empty() {
            return Err(RecipientError::Missing);
        }
        let parsed = recipients
            .iter()
            .enumerate()
            .map(|(i, r)| {
                age::x25519::Recipient::from_str(r.as_ref().trim()).map_err(|reason| {
                    RecipientError::Invalid {
                        index: i + 1,
                        reason: reason.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Protection::Age(parsed.into()))
    }

    /// True when outputs are encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Protection::Age(_))
    }

    /// The name an output called `plain` has on disk: `plain` itself, or `plain.age`.
    pub fn file_name(&self, plain: &str) -> String {
        match self {
            Protection::Plaintext => plain.to_owned(),
            Protection::Age(_) => format!("{plain}{AGE_SUFFIX}"),
        }
    }

    /// Starts writing an output into `file`: through a buffer, and through age when encrypted
    /// (the age header is written at once).
    pub(crate) fn sink(&self, file: File) -> io::Result<Sink> {
        let buffered = BufWriter::with_capacity(64 * 1024, file);
        match self {
            Protection::Plaintext => Ok(Sink::Plain(buffered)),
            Protection::Age(recipients) => {
                let encryptor = age::Encryptor::with_recipients(
                    recipients.iter().map(|r| r as &dyn age::Recipient),
                )
                .map_err(io::Error::other)?;
                Ok(Sink::Age(encryptor.wrap_output(buffered)?))
            }
        }
    }
}

/// The writer of one output file's content.
pub(crate) enum Sink {
    Plain(BufWriter<File>),
    Age(age::stream::StreamWriter<BufWriter<File>>),
}

impl Sink {
    /// Ends the content (age's last chunk and tag), flushes, and returns the file to be synced.
    pub(crate) fn finish(self) -> io::Result<File> {
        let buffered = match self {
            Sink::Plain(b) => b,
            Sink::Age(stream) => stream.finish()?,
        };
        buffered.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Age(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(buf),
            Sink::Age(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Age(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn identity() -> age::x25519::Identity {
        age::x25519::Identity::generate()
    }

    fn decrypt(bytes: &[u8], identity: &age::x25519::Identity) -> Result<Vec<u8>, String> {
        let decryptor = age::Decryptor::new(bytes).map_err(|e| e.to_string())?;
        let mut reader = decryptor
            .decrypt(std::iter::once(identity as &dyn age::Identity))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn recipients_are_checked_and_named_by_position() {
        assert_eq!(
            Protection::age::<&str>(&[]).expect_err("empty"),
            RecipientError::Missing
        );
        let good = identity().to_public().to_string();
        let err = Protection::age(&[good.as_str(), "age1notakey"]).expect_err("bad");
        assert!(
            matches!(err, RecipientError::Invalid { index: 2, .. }),
            "{err}"
        );
        let p = Protection::age(&[format!(" {good} ")]).expect("trimmed");
        assert!(p.is_encrypted());
        assert_eq!(p.file_name("a.csv"), "a.csv.age");
        assert_eq!(Protection::Plaintext.file_name("a.csv"), "a.csv");
    }

    #[test]
    fn a_sink_encrypts_for_every_recipient_and_only_for_them() {
        let (a, b, stranger) = (identity(), identity(), identity());
        let p = Protection::age(&[a.to_public().to_string(), b.to_public().to_string()])
            .expect("recipients");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.age");
        let content: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut sink = p.sink(File::create(&path).expect("create")).expect("sink");
        sink.write_all(&content).expect("write");
        sink.finish().expect("finish").sync_all().expect("sync");
        let bytes = std::fs::read(&path).expect("read");
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
        assert_eq!(decrypt(&bytes, &a).expect("a decrypts"), content);
        assert_eq!(decrypt(&bytes, &b).expect("b decrypts"), content);
        assert!(decrypt(&bytes, &stranger).is_err(), "not a recipient");
        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        assert!(decrypt(&flipped, &a).is_err(), "a flipped byte is detected");
        let truncated = &bytes[..bytes.len() - 100];
        assert!(
            decrypt(truncated, &a).is_err(),
            "a truncated file is detected"
        );
    }
}
