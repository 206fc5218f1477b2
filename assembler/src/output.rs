//! The day's output files: `FirmESGRatings_YYYYMMDD.csv` and `FirmESGRatings_YYYYMMDD_errors.csv`
//! (DESIGN section 6), and the one atomic-write helper every output file goes through.
//!
//! Responsibilities:
//! - the exact cell text of a row: two-decimal scores rounded half away from zero from the exact
//!   decimal, `N/A` for missing cells and for every ESG cell of a `Failed` row (the values come
//!   as one [`EsgValues`], whose rules say what a `Failed` or `Partial` score holds), control
//!   characters cleaned ([`clean_controls`]: no NUL, escape, DEL or C1 character ever reaches a
//!   file; line breaks become LF, tabs a space, the rest U+FFFD), then formula neutralisation (a
//!   leading `'` before `=`, `+`, `-`, `@`, tab, CR or LF) of every cell;
//! - "nothing duplicated": [`OutputWriter`] refuses a row whose account id is not strictly
//!   greater (byte order) than the previous one, so a file it produces has each id once, sorted;
//! - the manual override [`replace_rows`], which rewrites the rows of named accounts in an
//!   existing day's files and copies every other row byte for byte;
//! - atomicity: every file is written to a temporary name in the target directory, flushed,
//!   fsynced, renamed over the final name, and the directory is fsynced.
//!
//! Guarantee: a reader of the final name sees either the previous complete file or the new
//! complete file, never a part of one, and a failed write (an io error, a refused row, a dropped
//! writer) leaves the previous file untouched and removes its temporary file. Limits: the ratings
//! file and its errors file are two renames, done errors file first; a crash between the two
//! leaves the new errors file beside the previous ratings file (each of them whole). Temporary
//! files of a process killed mid-write stay behind (hidden names `.FirmESGRatings_….tmp-…`).
//! Two concurrent writers of the same day's files do not corrupt them, but the last rename wins:
//! callers serialise writes of one business date.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use esg_schemas::{EsgValues, Pillar, ScoreStatus};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::encryption::{Protection, Sink};
use crate::parquet::ParquetWriter;
use crate::summary::RowStats;

/// Header of the ratings file, exactly as written.
pub const HEADER: [&str; 10] = [
    "Account ID",
    "Account Name",
    "Overall ESG Score",
    "Environmental Score",
    "Social Score",
    "Governance Score",
    "Primary ESG Focus",
    "Primary Focus Score",
    "Analysis Date",
    "Processing Status",
];

/// Header of the errors file, exactly as written.
pub const ERRORS_HEADER: [&str; 6] = [
    "Account ID",
    "Processing Status",
    "Error Code",
    "Error Message",
    "Attempts",
    "Last Attempt Time",
];

/// The text of a missing cell.
pub const NOT_AVAILABLE: &str = "N/A";

/// Error code written for a row that claims `Successful` but lacks an ESG value
/// ([`EsgValues::is_partial`]) and carries no error code of its own; such a row is written as
/// `Partial` (see [`format_row`]).
pub const INCOMPLETE_SCORE_CODE: &str = "incomplete_score";

/// Permissions of every output file: owner read/write, group read (DESIGN section 6).
const FILE_MODE: u32 = 0o640;
/// Permissions of an output directory this module creates.
const DIR_MODE: u32 = 0o750;
/// Longest record [`replace_rows`] accepts when reading an existing file; a longer one means
/// the file is not one of ours (or is corrupt), and reading stops instead of buffering it.
const MAX_RECORD_BYTES: usize = 1 << 20;

/// Errors of writing or rewriting the output files. Each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The file system refused an operation (disk full, permissions, missing file...).
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A row arrived with an account id not greater than the previous row's.
    #[error(
        "row for account {id} arrives after account {previous}: rows must be sorted by account id"
    )]
    OutOfOrder { previous: String, id: String },
    /// A second row arrived for the same account.
    #[error("duplicate row for account {id} (previous row has account {previous})")]
    Duplicate { previous: String, id: String },
    /// A row without an account id.
    #[error("row without an account id (after account {previous:?})")]
    EmptyAccountId { previous: Option<String> },
    /// A replacement keyed by one id carries a row of another account.
    #[error("replacement keyed by account {key} carries a row for account {id}")]
    ReplacementIdMismatch { key: String, id: String },
    /// An existing file that [`replace_rows`] reads is not a well-formed output file.
    /// `record` counts CSV records from 1, the header being record 1.
    #[error("{path}, record {record}: {reason}")]
    Malformed {
        path: PathBuf,
        record: u64,
        reason: String,
    },
    /// The summary could not be serialised.
    #[error("serialising {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The Parquet library refused to write or read a day's Parquet (not a file-system error:
    /// those are [`OutputError::Io`]).
    #[error("{action} {path}: {source}")]
    Parquet {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: ::parquet::errors::ParquetError,
    },
    /// A cell of the ratings file has no Parquet value (a score that is not a two-decimal
    /// number, a date that is not `YYYY-MM-DD`, an unknown status...): nothing is written.
    #[error("{path}: {source}")]
    Cell {
        path: PathBuf,
        #[source]
        source: Box<crate::parquet::CellError>,
    },
    /// The writer failed earlier and must be dropped (which removes its temporary files).
    #[error("output writer for {path} failed earlier; drop it and start again")]
    Poisoned { path: PathBuf },
}

impl OutputError {
    /// True when trying again may succeed (an io error such as a full disk); false when the
    /// input itself is wrong (unsorted rows, a malformed existing file).
    pub fn is_transient(&self) -> bool {
        matches!(self, OutputError::Io { .. })
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One account's line of the ratings file, as the assembler hands it over: exact decimals,
/// `None` for what is missing. [`format_row`] turns it into cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub account_id: String,
    pub account_name: String,
    pub status: ScoreStatus,
    /// The ESG values the score carries (a `Failed` row shows none of them, whatever it
    /// carries: [`EsgValues::failed`]).
    pub values: EsgValues,
    /// Attempts the scorer made (errors file).
    pub attempts: i32,
    /// Machine-readable reason of a non-`Successful` row (errors file).
    pub error_code: Option<String>,
    /// Human-readable reason of a non-`Successful` row (errors file).
    pub error_message: Option<String>,
    /// When the scorer last tried (errors file).
    pub last_attempt: Option<DateTime<Utc>>,
}

/// The names (not paths) of one business date's output files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNames {
    /// `FirmESGRatings_YYYYMMDD.csv`
    pub csv: String,
    /// `FirmESGRatings_YYYYMMDD_errors.csv`
    pub errors: String,
    /// `FirmESGRatings_YYYYMMDD_summary.json`
    pub summary_json: String,
    /// `FirmESGRatings_YYYYMMDD_summary.html` (written elsewhere; named here so names live in one place)
    pub summary_html: String,
}

/// The output file names of a business date (`YYYYMMDD` = the date as given; the caller passes
/// the business date in America/Chicago).
pub fn file_names(business_date: NaiveDate) -> FileNames {
    let stem = format!("FirmESGRatings_{}", business_date.format("%Y%m%d"));
    FileNames {
        csv: format!("{stem}.csv"),
        errors: format!("{stem}_errors.csv"),
        summary_json: format!("{stem}_summary.json"),
        summary_html: format!("{stem}_summary.html"),
    }
}

/// A score as the file shows it: exactly two decimals, rounded half away from zero from the
/// exact value (`70` → `70.00`, `72.345` → `72.35`, `99.995` → `100.00`).
pub fn format_score(value: Decimal) -> String {
    let mut rounded = value.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(2);
    if rounded.is_zero() {
        // -0.001 rounds to a negative zero, which would print as "-0.00".
        rounded.set_sign_positive(true);
    }
    rounded.to_string()
}

/// True when a spreadsheet would run a cell starting with this text as a formula. A leading
/// line feed is included: a cell cleaned by [`clean_controls`] starts with LF where the text
/// started with CR.
fn is_formula_trigger(cell: &str) -> bool {
    matches!(
        cell.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r' | b'\n')
    )
}

/// What replaces a control character that is neither a line break nor a tab.
pub const REPLACEMENT_CHARACTER: char = '\u{FFFD}';

/// The text of a cell with no control character but LF: every line break (CR LF, a lone CR,
/// NEL U+0085) becomes one LF, a tab becomes a space, and every other control character (C0,
/// DEL, C1: NUL, escape, backspace, ...) becomes U+FFFD, so a person sees that something was
/// there. Everything else, other Unicode included, is kept. The CSV quoting keeps the LFs
/// inside the cell.
pub fn clean_controls(cell: String) -> String {
    if !cell.chars().any(|c| c.is_control() && c != '\n') {
        return cell;
    }
    let mut clean = String::with_capacity(cell.len());
    let mut chars = cell.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                clean.push('\n');
            }
            '\n' | '\u{85}' => clean.push('\n'),
            '\t' => clean.push(' '),
            c if c.is_control() => clean.push(REPLACEMENT_CHARACTER),
            c => clean.push(c),
        }
    }
    clean
}

/// A cell as the files write it (before CSV quoting): controls cleaned, then neutralised.
fn file_cell(cell: String) -> String {
    neutralise(clean_controls(cell))
}

/// Neutralises a cell a spreadsheet would run as a formula by prefixing `'`.
pub fn neutralise(cell: String) -> String {
    if is_formula_trigger(&cell) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// The inverse of [`neutralise`] for text read back from a file. Ambiguous only for text that
/// itself started with `'` followed by a trigger character, which account ids (contract pattern
/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`) and our error codes never do.
pub(crate) fn unneutralise(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if is_formula_trigger(rest) => rest,
        _ => cell,
    }
}

/// What a row says once the file's rules are applied: the values its cells show.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Effective<'a> {
    pub status: ScoreStatus,
    pub values: EsgValues,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
}

/// Applies the file's rules to a row: a `Failed` row shows no ESG value whatever it carries
/// ([`EsgValues::failed`]); a row claiming `Successful` whose values are partial
/// ([`EsgValues::is_partial`]) is shown as `Partial` (the status column never claims a complete
/// score the cells do not show).
pub(crate) fn effective(row: &Row) -> Effective<'_> {
    let error_code = row.error_code.as_deref().filter(|c| !c.is_empty());
    let error_message = row.error_message.as_deref().filter(|m| !m.is_empty());
    if row.status == ScoreStatus::Failed {
        return Effective {
            status: ScoreStatus::Failed,
            values: EsgValues::failed(),
            error_code,
            error_message,
        };
    }
    let mut shown = Effective {
        status: row.status,
        values: row.values,
        error_code,
        error_message,
    };
    if row.status == ScoreStatus::Successful && row.values.is_partial() {
        shown.status = ScoreStatus::Partial;
        if shown.error_code.is_none() {
            shown.error_code = Some(INCOMPLETE_SCORE_CODE);
            shown.error_message = Some("scored as successful but some ESG fields are missing");
        }
    }
    shown
}

fn score_cell(value: Option<Decimal>) -> String {
    value.map_or_else(|| NOT_AVAILABLE.to_owned(), format_score)
}

/// The seven ESG cells of a row, Overall ESG Score to Analysis Date: each value in the file's
/// format, `N/A` where there is none. The one place the `N/A` cells are written.
fn esg_cells(values: &EsgValues) -> [String; 7] {
    [
        score_cell(values.overall),
        score_cell(values.environmental),
        score_cell(values.social),
        score_cell(values.governance),
        values
            .primary_focus
            .map_or(NOT_AVAILABLE, Pillar::as_str)
            .to_owned(),
        score_cell(values.primary_focus_score),
        values.analysis_date.map_or_else(
            || NOT_AVAILABLE.to_owned(),
            |d| d.format("%Y-%m-%d").to_string(),
        ),
    ]
}

/// The ten cells of a row exactly as the ratings file holds them (before CSV quoting): the N/A
/// rules applied (every ESG cell of a `Failed` row and every missing cell `N/A`; a `Successful`
/// row with a missing ESG value shown as `Partial`), then every cell cleaned of control
/// characters and neutralised.
pub fn format_row(row: &Row) -> [String; 10] {
    let shown = effective(row);
    let [overall, environmental, social, governance, focus, focus_score, analysis_date] =
        esg_cells(&shown.values);
    [
        row.account_id.clone(),
        row.account_name.clone(),
        overall,
        environmental,
        social,
        governance,
        focus,
        focus_score,
        analysis_date,
        shown.status.as_str().to_owned(),
    ]
    .map(file_cell)
}

/// The six cells of a row's errors-file line (before CSV quoting), or `None` for a row shown as
/// `Successful`, which has no errors-file line.
pub fn format_error_row(row: &Row) -> Option<[String; 6]> {
    let shown = effective(row);
    if shown.status == ScoreStatus::Successful {
        return None;
    }
    Some(
        [
            row.account_id.clone(),
            shown.status.as_str().to_owned(),
            shown.error_code.unwrap_or_default().to_owned(),
            shown.error_message.unwrap_or_default().to_owned(),
            row.attempts.to_string(),
            row.last_attempt
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                .unwrap_or_default(),
        ]
        .map(file_cell),
    )
}

/// One CSV record, RFC 4180 with CRLF line end, as bytes.
fn encode_record<S: AsRef<[u8]>>(cells: &[S]) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(160);
    {
        let mut writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .buffer_capacity(1024)
            .from_writer(&mut bytes);
        writer.write_record(cells)?;
        writer.flush()?;
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Atomic write helper: shared by the ratings file, the errors file and the summary.
// ---------------------------------------------------------------------------------------------

/// Distinguishes temporary files of one process.
static TEMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temporary name beside its final name. Dropping it without
/// [`PendingFile::persist`] removes the temporary file, so every early return cleans up.
#[derive(Debug)]
pub(crate) struct PendingFile {
    temp: PathBuf,
    target: PathBuf,
    armed: bool,
}

impl PendingFile {
    /// Creates `dir/.{name}.tmp-{pid}-{n}` (new, never an existing file) with mode 0640.
    pub(crate) fn create(dir: &Path, name: &str) -> Result<(Self, File), OutputError> {
        let target = dir.join(name);
        let mut tries = 0;
        loop {
            let seq = TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed);
            let temp = dir.join(format!(".{name}.tmp-{}-{seq}", std::process::id()));
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
            match options.open(&temp) {
                Ok(file) => {
                    let pending = PendingFile {
                        temp,
                        target,
                        armed: true,
                    };
                    // The umask may have narrowed the mode; set it exactly.
                    #[cfg(unix)]
                    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(FILE_MODE))
                        .map_err(io_error("setting permissions of", &pending.temp))?;
                    return Ok((pending, file));
                }
                // A leftover of a crashed process that had the same pid: take another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(io_error("creating temporary file", &temp)(e)),
            }
        }
    }

    /// The temporary path.
    pub(crate) fn temp(&self) -> &Path {
        &self.temp
    }

    /// The final path.
    pub(crate) fn target(&self) -> &Path {
        &self.target
    }

    /// Ends the content (the last age chunk when encrypted), flushes it and fsyncs the
    /// temporary file.
    pub(crate) fn seal(&self, out: Sink) -> Result<(), OutputError> {
        let file = out.finish().map_err(io_error("writing", &self.temp))?;
        file.sync_all().map_err(io_error("syncing", &self.temp))
    }

    /// Renames the (sealed) temporary file over the final name. The caller then fsyncs the
    /// directory ([`sync_dir`]) to make the rename durable.
    pub(crate) fn persist(mut self) -> Result<PathBuf, OutputError> {
        fs::rename(&self.temp, &self.target).map_err(io_error(
            "renaming temporary file into place at",
            &self.target,
        ))?;
        self.armed = false;
        Ok(self.target.clone())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.temp) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.temp.display(), error = %e, "cannot remove temporary output file");
                }
            }
        }
    }
}

/// Fsyncs a directory so that renames in it survive a crash (no-op where unsupported).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), OutputError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("syncing directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates the output directory (mode 0750) if it is missing. An existing one that is more open
/// (writable by its group, or open to others) is tightened to at most 0750, with a warning; one
/// that cannot be (not the job's own) or that is a shared sticky directory such as `/tmp` is
/// refused, and no file is written into it.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), OutputError> {
    if dir.is_dir() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let refuse = |why: String| OutputError::Io {
                action: "use the output directory",
                path: dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::PermissionDenied, why),
            };
            let mode = fs::metadata(dir)
                .map_err(io_error("reading permissions of", dir))?
                .permissions()
                .mode()
                & 0o7777;
            if mode & 0o1000 != 0 {
                return Err(refuse(format!(
                    "it is a shared directory (mode {mode:o}) that others can write to: give the outputs a directory of their own"
                )));
            }
            // The set-group-ID bit stays: it gives the files the directory's group.
            let allowed = DIR_MODE | 0o2000;
            if mode & !allowed != 0 {
                let tightened = mode & allowed;
                fs::set_permissions(dir, fs::Permissions::from_mode(tightened)).map_err(|e| {
                    refuse(format!(
                        "it is open to others (mode {mode:o}) and cannot be tightened to {tightened:o}: {e}"
                    ))
                })?;
                tracing::warn!(dir = %dir.display(), from = format!("{mode:o}"), to = format!("{tightened:o}"), "output directory was more open than 0750: tightened");
            }
        }
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder
        .create(dir)
        .map_err(io_error("creating output directory", dir))?;
    #[cfg(unix)]
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(DIR_MODE))
        .map_err(io_error("setting permissions of", dir))?;
    Ok(())
}

/// Creates the output directory if missing and checks an existing one (as the writers do:
/// 0750, tightened or refused); with `gid`, gives it to that group with the set-group-ID bit
/// (mode 2750), so that every output written there is of that group. The job's user must own
/// the directory and be a member of the group (or be root).
pub fn prepare_dir(dir: &Path, gid: Option<u32>) -> Result<(), OutputError> {
    ensure_dir(dir)?;
    #[cfg(unix)]
    if let Some(gid) = gid {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = fs::metadata(dir).map_err(io_error("reading permissions of", dir))?;
        if meta.gid() != gid {
            std::os::unix::fs::chown(dir, None, Some(gid)).map_err(|e| OutputError::Io {
                action: "give the output directory to [output] group",
                path: dir.to_path_buf(),
                source: io::Error::new(
                    e.kind(),
                    format!(
                        "{e} (gid {gid}: the job's user must own the directory and be a member of the group)"
                    ),
                ),
            })?;
            tracing::info!(dir = %dir.display(), from = meta.gid(), to = gid, "output directory given to its group");
        }
        let mode = meta.mode() & 0o7777;
        let wanted = DIR_MODE | 0o2000;
        if mode != wanted {
            fs::set_permissions(dir, fs::Permissions::from_mode(wanted))
                .map_err(io_error("setting permissions of", dir))?;
        }
    }
    #[cfg(not(unix))]
    let _ = gid;
    Ok(())
}

/// The plaintext of the encrypted output at `path`, as it streams, with one of `identities`; a
/// file that is not an age file, or that no identity opens, is an error (for `action`) before
/// anything is read. A damaged chunk fails later, on read, with `InvalidData`.
pub(crate) fn open_encrypted(
    path: &Path,
    action: &'static str,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<age::stream::StreamReader<BufReader<File>>, OutputError> {
    let refuse = |kind: io::ErrorKind, why: String| OutputError::Io {
        action,
        path: path.to_path_buf(),
        source: io::Error::new(kind, why),
    };
    let input = File::open(path).map_err(io_error("opening", path))?;
    let decryptor = age::Decryptor::new_buffered(BufReader::new(input))
        .map_err(|e| refuse(io::ErrorKind::InvalidData, format!("not an age file: {e}")))?;
    decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| {
            refuse(
                io::ErrorKind::PermissionDenied,
                format!("cannot decrypt: {e}"),
            )
        })
}

/// Re-encrypts the encrypted output at `path` (`*.age`) to the recipients of `protection`,
/// decrypting it with one of `identities`: age stream into age stream, into a temporary file in
/// the same directory that then replaces the original, so no plaintext touches the disk and the
/// original stays as it was on any failure (no matching identity, a damaged file, a full disk).
/// Returns the length of the content.
pub fn reencrypt(
    path: &Path,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    protection: &Protection,
) -> Result<u64, OutputError> {
    let refuse = |kind: io::ErrorKind, why: String| OutputError::Io {
        action: "re-encrypt",
        path: path.to_path_buf(),
        source: io::Error::new(kind, why),
    };
    if !protection.is_encrypted() {
        return Err(refuse(
            io::ErrorKind::InvalidInput,
            "there is no [encryption] section: no recipients to encrypt to".into(),
        ));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(refuse(
            io::ErrorKind::InvalidInput,
            "not a file name".into(),
        ));
    };
    if !name.ends_with(crate::encryption::AGE_SUFFIX) {
        return Err(refuse(
            io::ErrorKind::InvalidInput,
            "not an encrypted output (*.age)".into(),
        ));
    }
    let mut plain = open_encrypted(path, "re-encrypt", identities)?;
    let (pending, file) = PendingFile::create(dir, name)?;
    let mut out = protection
        .sink(file)
        .map_err(io_error("writing", &pending.temp))?;
    // A damaged chunk fails here, on read; the temporary file is then removed.
    let length = io::copy(&mut plain, &mut out).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => refuse(
            io::ErrorKind::InvalidData,
            format!("damaged (an age chunk does not authenticate): {e}"),
        ),
        _ => io_error("re-encrypting into", &pending.temp)(e),
    })?;
    pending.seal(out)?;
    pending.persist()?;
    sync_dir(dir)?;
    Ok(length)
}

/// Writes `bytes` as the output `name` in `dir` atomically (temporary file, fsync, rename,
/// directory fsync), encrypted as `protection` says (then named `name.age`).
pub(crate) fn write_file_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    protection: &Protection,
) -> Result<PathBuf, OutputError> {
    ensure_dir(dir)?;
    let (pending, file) = PendingFile::create(dir, &protection.file_name(name))?;
    let mut out = protection
        .sink(file)
        .map_err(io_error("writing", &pending.temp))?;
    out.write_all(bytes)
        .map_err(io_error("writing", &pending.temp))?;
    pending.seal(out)?;
    let path = pending.persist()?;
    sync_dir(dir)?;
    Ok(path)
}

/// A CSV file being written through a [`PendingFile`].
struct CsvSink {
    // Declared before `pending`: dropped (and flushed) before the temporary file is removed.
    out: Sink,
    pending: PendingFile,
}

impl CsvSink {
    /// Starts the output `name` (on disk `name.age` when encrypted).
    fn create(dir: &Path, name: &str, protection: &Protection) -> Result<Self, OutputError> {
        let (pending, file) = PendingFile::create(dir, &protection.file_name(name))?;
        let out = protection
            .sink(file)
            .map_err(io_error("writing", &pending.temp))?;
        Ok(CsvSink { out, pending })
    }

    fn write_cells<S: AsRef<[u8]>>(&mut self, cells: &[S]) -> Result<(), OutputError> {
        let bytes = encode_record(cells).map_err(io_error("encoding", &self.pending.temp))?;
        self.write_raw(&bytes)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        self.out
            .write_all(bytes)
            .map_err(io_error("writing", &self.pending.temp))
    }

    /// Copies a record of an existing file byte for byte, except a record holding a control
    /// character (a file written before they were cleaned), which is written again with its
    /// cells cleaned ([`clean_controls`]; they were neutralised when first written).
    fn copy_record(&mut self, raw: &[u8], cells: &[String]) -> Result<(), OutputError> {
        if cells
            .iter()
            .any(|c| c.chars().any(|c| c.is_control() && c != '\n'))
        {
            let cleaned: Vec<String> = cells.iter().cloned().map(clean_controls).collect();
            self.write_cells(&cleaned)
        } else {
            self.write_raw(raw)
        }
    }

    /// Flushes and fsyncs; the returned file is ready to persist.
    fn seal(self) -> Result<PendingFile, OutputError> {
        let CsvSink { out, pending } = self;
        pending.seal(out)?;
        Ok(pending)
    }
}

/// Persists the errors file, then the day's Parquet (when there is one), then the ratings
/// file, then fsyncs the directory.
fn persist_pair(
    dir: &Path,
    ratings: CsvSink,
    errors: CsvSink,
    parquet: Option<ParquetWriter>,
) -> Result<(PathBuf, PathBuf), OutputError> {
    let ratings = ratings.seal()?;
    let errors = errors.seal()?;
    let parquet = parquet.map(ParquetWriter::seal).transpose()?;
    // Errors file and Parquet first: when the new ratings file appears, its companions are
    // already there.
    let errors_path = errors.persist()?;
    if let Some(parquet) = parquet {
        parquet.persist()?;
    }
    let ratings_path = ratings.persist()?;
    sync_dir(dir)?;
    Ok((ratings_path, errors_path))
}

/// The day's Parquet to write beside the ratings file: when `parquet` asks for one, or when the
/// day already has one (so it never disagrees with the rewritten ratings file).
fn parquet_for(
    dir: &Path,
    business_date: NaiveDate,
    protection: &Protection,
    parquet: bool,
) -> Result<Option<ParquetWriter>, OutputError> {
    if parquet || crate::parquet::exists(dir, business_date) {
        ParquetWriter::create(dir, business_date, protection).map(Some)
    } else {
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------
// The writer of a day's files.
// ---------------------------------------------------------------------------------------------

/// What a finished write produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Path of the ratings file.
    pub csv: PathBuf,
    /// Path of the errors file.
    pub errors: PathBuf,
    /// Statistics of the rows of the ratings file, for the summary.
    pub stats: RowStats,
}

/// Writes the ratings file and the errors file side by side, one row at a time (nothing is held
/// in memory but the statistics). Rows must come sorted by account id, each id once.
///
/// Any error poisons the writer: later calls fail, and dropping it removes the temporary files,
/// leaving the previous day's files (if any) as they were. Only [`OutputWriter::finish`] makes
/// the new files visible.
pub struct OutputWriter {
    dir: PathBuf,
    ratings: CsvSink,
    errors: CsvSink,
    parquet: Option<ParquetWriter>,
    last_id: Option<String>,
    stats: RowStats,
    poisoned: bool,
}

impl std::fmt::Debug for OutputWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputWriter")
            .field("target", &self.ratings.pending.target())
            .field("rows", &self.stats.rows)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl OutputWriter {
    /// Starts the two files of `business_date` in `dir` (created with mode 0750 if missing),
    /// encrypted as `protection` says, and writes their headers; and the day's Parquet when the
    /// day already has one ([`OutputWriter::create_with_parquet`]).
    pub fn create(
        dir: &Path,
        business_date: NaiveDate,
        protection: &Protection,
    ) -> Result<Self, OutputError> {
        Self::create_with_parquet(dir, business_date, protection, false)
    }

    /// [`OutputWriter::create`], with the day's Parquet (`[output] parquet`) written beside the
    /// ratings file when `parquet`, or when the day already has one, from the same cells.
    pub fn create_with_parquet(
        dir: &Path,
        business_date: NaiveDate,
        protection: &Protection,
        parquet: bool,
    ) -> Result<Self, OutputError> {
        ensure_dir(dir)?;
        let names = file_names(business_date);
        let mut ratings = CsvSink::create(dir, &names.csv, protection)?;
        let mut errors = CsvSink::create(dir, &names.errors, protection)?;
        ratings.write_cells(&HEADER)?;
        errors.write_cells(&ERRORS_HEADER)?;
        let parquet = parquet_for(dir, business_date, protection, parquet)?;
        tracing::debug!(dir = %dir.display(), %business_date, parquet = parquet.is_some(), "output files started");
        Ok(OutputWriter {
            dir: dir.to_path_buf(),
            ratings,
            errors,
            parquet,
            last_id: None,
            stats: RowStats::default(),
            poisoned: false,
        })
    }

    /// Writes one account's row (and its errors-file line when it is not `Successful`).
    /// Refuses an empty id, and an id not strictly after the previous one (byte order).
    pub fn write(&mut self, row: &Row) -> Result<(), OutputError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        let result = self.write_row(row);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn write_row(&mut self, row: &Row) -> Result<(), OutputError> {
        check_order(self.last_id.as_deref(), &row.account_id)?;
        if row.status == ScoreStatus::Successful && effective(row).status != ScoreStatus::Successful
        {
            tracing::warn!(
                account_id = %row.account_id,
                "row claims Successful but lacks ESG fields; written as Partial"
            );
        }
        let cells = format_row(row);
        self.ratings.write_cells(&cells)?;
        if let Some(parquet) = &mut self.parquet {
            parquet.write_cells(&cells)?;
        }
        if let Some(error_cells) = format_error_row(row) {
            self.errors.write_cells(&error_cells)?;
        }
        self.stats.add(row);
        self.last_id = Some(row.account_id.clone());
        Ok(())
    }

    /// Flushes, fsyncs and renames both files into place, then fsyncs the directory.
    pub fn finish(self) -> Result<Written, OutputError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        let OutputWriter {
            dir,
            ratings,
            errors,
            parquet,
            stats,
            ..
        } = self;
        let (csv, errors) = persist_pair(&dir, ratings, errors, parquet)?;
        tracing::info!(
            file = %csv.display(),
            rows = stats.rows,
            successful = stats.successful,
            partial = stats.partial,
            failed = stats.failed,
            "ratings file written"
        );
        Ok(Written { csv, errors, stats })
    }

    fn poisoned_error(&self) -> OutputError {
        OutputError::Poisoned {
            path: self.ratings.pending.target().to_path_buf(),
        }
    }
}

/// The sorted-order rule: ids non-empty and strictly increasing in byte order.
fn check_order(previous: Option<&str>, id: &str) -> Result<(), OutputError> {
    if id.is_empty() {
        return Err(OutputError::EmptyAccountId {
            previous: previous.map(str::to_owned),
        });
    }
    match previous {
        Some(prev) if prev == id => Err(OutputError::Duplicate {
            previous: prev.to_owned(),
            id: id.to_owned(),
        }),
        Some(prev) if prev > id => Err(OutputError::OutOfOrder {
            previous: prev.to_owned(),
            id: id.to_owned(),
        }),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Manual override: replace some rows of an existing day's files.
// ---------------------------------------------------------------------------------------------

/// What [`replace_rows`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Replaced {
    /// The rewritten files and the statistics of the new ratings file.
    pub written: Written,
    /// Ids whose rows were replaced, in file order.
    pub replaced: Vec<String>,
    /// Ids asked for that the file does not hold (not added).
    pub missing: Vec<String>,
}

/// Manual override: rewrites an existing day's files, replacing the rows of the accounts in
/// `replacements` (keyed by id) and copying every other row byte for byte as it was (copied
/// rows are never re-parsed into a [`Row`] nor re-neutralised; only a row holding a control
/// character, from a file written before they were cleaned, has its cells cleaned). The errors file likewise: old
/// lines of replaced ids are dropped, new lines added (in id order) for replaced rows that are
/// not `Successful`, every other line copied byte for byte. Ids in `replacements` that the file
/// does not hold are returned in `missing` and not added. Atomic like [`OutputWriter`]; both
/// files must exist. Statistics come from the cells of every row of the new file (exact values
/// for replaced rows, the two-decimal cells for copied rows; error codes from the errors file).
/// The day's Parquet is rewritten from the cells of the new ratings file, row for row, when
/// `parquet` asks for one or the day already has one.
pub fn replace_rows(
    dir: &Path,
    business_date: NaiveDate,
    replacements: &BTreeMap<String, Row>,
    parquet: bool,
) -> Result<Replaced, OutputError> {
    for (key, row) in replacements {
        if *key != row.account_id {
            return Err(OutputError::ReplacementIdMismatch {
                key: key.clone(),
                id: row.account_id.clone(),
            });
        }
    }
    let names = file_names(business_date);
    let ratings_path = dir.join(&names.csv);
    let errors_path = dir.join(&names.errors);
    let ratings_in = File::open(&ratings_path).map_err(io_error("opening", &ratings_path))?;
    let errors_in = File::open(&errors_path).map_err(io_error("opening", &errors_path))?;

    let mut stats = RowStats::default();

    // Ratings file: replace in place (a replaced row keeps its position, so the order holds).
    let by_cell: HashMap<String, &Row> = replacements
        .values()
        .map(|row| (neutralise(row.account_id.clone()), row))
        .collect();
    let mut ratings_out = CsvSink::create(dir, &names.csv, &Protection::Plaintext)?;
    let mut parquet_out = parquet_for(dir, business_date, &Protection::Plaintext, parquet)?;
    let mut records = RawRecords::new(ratings_in, &ratings_path);
    let header = records.expect_header(&HEADER)?;
    ratings_out.write_raw(&header)?;
    let mut replaced: Vec<String> = Vec::new();
    let mut previous: Option<String> = None;
    while let Some(RawRecord { raw, cells }) = records.next_cells(HEADER.len())? {
        let id = unneutralise(&cells[0]).to_owned();
        check_order(previous.as_deref(), &id).map_err(|e| records.malformed(e.to_string()))?;
        if let Some(row) = by_cell.get(&cells[0]) {
            let cells = format_row(row);
            ratings_out.write_cells(&cells)?;
            if let Some(parquet) = &mut parquet_out {
                parquet.write_cells(&cells)?;
            }
            stats.add(row);
            replaced.push(id.clone());
        } else {
            ratings_out.copy_record(&raw, &cells)?;
            if let Some(parquet) = &mut parquet_out {
                // The cells as `copy_record` wrote them.
                let cleaned: Vec<String> = cells.iter().cloned().map(clean_controls).collect();
                parquet.write_cells(&cleaned)?;
            }
            stats
                .add_cells(&cells)
                .map_err(|reason| records.malformed(reason))?;
        }
        previous = Some(id);
    }
    let replaced_set: HashSet<&str> = replaced.iter().map(String::as_str).collect();
    let missing: Vec<String> = replacements
        .keys()
        .filter(|id| !replaced_set.contains(id.as_str()))
        .cloned()
        .collect();

    // Errors file: merge the new lines of replaced rows (sorted, as BTreeMap keys are) into the
    // old lines, dropping old lines of replaced ids.
    let mut new_lines = replaced
        .iter()
        .filter_map(|id| replacements.get(id))
        .filter_map(|row| format_error_row(row).map(|cells| (row.account_id.as_str(), cells)))
        .peekable();
    let mut errors_out = CsvSink::create(dir, &names.errors, &Protection::Plaintext)?;
    let mut records = RawRecords::new(errors_in, &errors_path);
    let header = records.expect_header(&ERRORS_HEADER)?;
    errors_out.write_raw(&header)?;
    while let Some(RawRecord { raw, cells }) = records.next_cells(ERRORS_HEADER.len())? {
        let id = unneutralise(&cells[0]);
        while let Some((_, line)) = new_lines.next_if(|(new_id, _)| *new_id < id) {
            errors_out.write_cells(&line)?;
        }
        if replaced_set.contains(id) {
            continue;
        }
        errors_out.copy_record(&raw, &cells)?;
        stats.add_error_line(&cells);
    }
    for (_, line) in new_lines {
        errors_out.write_cells(&line)?;
    }

    let (csv, errors) = persist_pair(dir, ratings_out, errors_out, parquet_out)?;
    tracing::info!(
        file = %csv.display(),
        replaced = replaced.len(),
        missing = missing.len(),
        rows = stats.rows,
        "ratings file rows replaced"
    );
    Ok(Replaced {
        written: Written { csv, errors, stats },
        replaced,
        missing,
    })
}

// ---------------------------------------------------------------------------------------------
// Erasure: an account's rows out of a kept day file.
// ---------------------------------------------------------------------------------------------

/// Erasure (`esg erase`): rewrites the kept output at `path` without the accounts of `ids`,
/// and returns how many rows (or, in a summary, list entries) held them; a file that holds none
/// is left untouched (0). Ratings and errors files lose the rows whose Account ID is in `ids`,
/// every other record copied byte for byte; a JSON summary loses every list entry that is one
/// of the ids (its failed accounts), its counts and averages stay as published; a day's Parquet
/// loses the rows of the ids ([`crate::parquet`]). Other files are not outputs with rows (0).
///
/// An encrypted output (`*.age`) is decrypted with one of `identities` as it streams and the new
/// content encrypted to the recipients of `protection` as it is written, so no plaintext touches
/// the disk; a plaintext output stays plaintext. Atomic like every output (temporary file,
/// fsync, rename): on any failure the file is as it was.
pub fn erase_accounts(
    path: &Path,
    ids: &HashSet<String>,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    protection: &Protection,
) -> Result<u64, OutputError> {
    let refuse = |kind, why| erase_refused(path, kind, why);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(refuse(
            io::ErrorKind::InvalidInput,
            "not a file name".into(),
        ));
    };
    let encrypted = name.ends_with(crate::encryption::AGE_SUFFIX);
    let plain_name = name.trim_end_matches(crate::encryption::AGE_SUFFIX);
    let is_parquet = plain_name.ends_with(".parquet");
    let header: Option<&[&str]> = if plain_name.ends_with("_errors.csv") {
        Some(&ERRORS_HEADER)
    } else if plain_name.ends_with(".csv") {
        Some(&HEADER)
    } else if plain_name.ends_with("_summary.json") || is_parquet {
        None
    } else if plain_name.ends_with("_summary.html") {
        return erase_from_page(path, ids, identities, protection);
    } else {
        return Ok(0);
    };
    let output_protection = if encrypted {
        if !protection.is_encrypted() {
            return Err(refuse(
                io::ErrorKind::InvalidInput,
                "it is encrypted, and there is no [encryption] section to encrypt the rewritten \
                 file to"
                    .into(),
            ));
        }
        if identities.is_empty() {
            return Err(refuse(
                io::ErrorKind::PermissionDenied,
                "it is encrypted: give the age identity of one of its recipients (--identity)"
                    .into(),
            ));
        }
        protection.clone()
    } else {
        Protection::Plaintext
    };
    if is_parquet {
        return crate::parquet::erase(path, ids, identities, &output_protection);
    }
    let content: Box<dyn Read> = if encrypted {
        Box::new(open_encrypted(path, "erase accounts from", identities)?)
    } else {
        Box::new(File::open(path).map_err(io_error("opening", path))?)
    };
    let (pending, file) = PendingFile::create(dir, name)?;
    let mut out = output_protection
        .sink(file)
        .map_err(io_error("writing", &pending.temp))?;
    let removed = match header {
        Some(header) => {
            let mut records = RawRecords::new(content, path);
            let head = records.expect_header(header)?;
            out.write_all(&head)
                .map_err(io_error("writing", &pending.temp))?;
            let mut removed = 0u64;
            while let Some(RawRecord { raw, cells }) = records.next_cells(header.len())? {
                if ids.contains(unneutralise(&cells[0])) {
                    removed += 1;
                } else {
                    out.write_all(&raw)
                        .map_err(io_error("writing", &pending.temp))?;
                }
            }
            removed
        }
        None => {
            let mut summary: serde_json::Value =
                serde_json::from_reader(content).map_err(|source| OutputError::Json {
                    path: path.to_path_buf(),
                    source,
                })?;
            let removed = remove_strings(&mut summary, ids);
            let mut bytes =
                serde_json::to_vec_pretty(&summary).map_err(|source| OutputError::Json {
                    path: path.to_path_buf(),
                    source,
                })?;
            bytes.push(b'\n');
            out.write_all(&bytes)
                .map_err(io_error("writing", &pending.temp))?;
            removed
        }
    };
    if removed == 0 {
        // Dropping `pending` removes the temporary file: the output stays as it was.
        return Ok(0);
    }
    pending.seal(out)?;
    pending.persist()?;
    sync_dir(dir)?;
    Ok(removed)
}

/// Why an erasure leaves the output at `path` as it is.
fn erase_refused(path: &Path, kind: io::ErrorKind, why: String) -> OutputError {
    OutputError::Io {
        action: "erase accounts from",
        path: path.to_path_buf(),
        source: io::Error::new(kind, why),
    }
}

/// Erasure of an HTML summary: the page is rendered again from its JSON summary beside it (the
/// page is a pure function of it), with the accounts of `ids` removed from it in memory, and
/// replaces the page when it differs. Returns the entries the JSON summary held of `ids`, or 1
/// when the JSON had already lost them but the page had not; 0 when the page is unchanged.
fn erase_from_page(
    path: &Path,
    ids: &HashSet<String>,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    protection: &Protection,
) -> Result<u64, OutputError> {
    let refuse = |kind, why| erase_refused(path, kind, why);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let encrypted = name.ends_with(crate::encryption::AGE_SUFFIX);
    let json_path = path.with_file_name(name.replacen("_summary.html", "_summary.json", 1));
    let open = |p: &Path| -> Result<Box<dyn Read>, OutputError> {
        if encrypted {
            if identities.is_empty() {
                return Err(refuse(
                    io::ErrorKind::PermissionDenied,
                    "it is encrypted: give the age identity of one of its recipients (--identity)"
                        .into(),
                ));
            }
            Ok(Box::new(open_encrypted(
                p,
                "erase accounts from",
                identities,
            )?))
        } else {
            Ok(Box::new(File::open(p).map_err(io_error("opening", p))?))
        }
    };
    if !json_path.exists() {
        return Err(refuse(
            io::ErrorKind::NotFound,
            format!(
                "the page is rebuilt from its JSON summary {}, which is not there: restore it, or remove the page by hand",
                json_path.display()
            ),
        ));
    }
    let mut summary: serde_json::Value =
        serde_json::from_reader(open(&json_path)?).map_err(|source| OutputError::Json {
            path: json_path.clone(),
            source,
        })?;
    let removed = remove_strings(&mut summary, ids);
    let summary: crate::summary::Summary =
        serde_json::from_value(summary).map_err(|source| OutputError::Json {
            path: json_path.clone(),
            source,
        })?;
    let page = crate::report::render(&summary)
        .map_err(|e| refuse(io::ErrorKind::InvalidData, e.to_string()))?;
    let mut old = Vec::new();
    open(path)?
        .read_to_end(&mut old)
        .map_err(io_error("reading", path))?;
    if old == page.as_bytes() {
        return Ok(0);
    }
    let output_protection = if encrypted {
        protection.clone()
    } else {
        Protection::Plaintext
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    write_file_atomically(
        dir,
        name.trim_end_matches(crate::encryption::AGE_SUFFIX),
        page.as_bytes(),
        &output_protection,
    )?;
    Ok(removed.max(1))
}

/// Removes from every list of `value`, however deep, the strings that are in `ids` and the
/// objects whose `account_id` is (a summary's `failed_details`); returns how many.
pub(crate) fn remove_strings(value: &mut serde_json::Value, ids: &HashSet<String>) -> u64 {
    let is_erased = |item: &serde_json::Value| {
        let id = item
            .as_str()
            .or_else(|| item.get("account_id").and_then(serde_json::Value::as_str));
        id.is_some_and(|s| ids.contains(s))
    };
    match value {
        serde_json::Value::Array(items) => {
            let before = items.len();
            items.retain(|item| !is_erased(item));
            let mut removed = (before - items.len()) as u64;
            for item in items {
                removed += remove_strings(item, ids);
            }
            removed
        }
        serde_json::Value::Object(fields) => {
            fields.values_mut().map(|v| remove_strings(v, ids)).sum()
        }
        _ => 0,
    }
}

/// One record of an existing file: its exact bytes (terminator included) and its cells.
struct RawRecord {
    raw: Vec<u8>,
    cells: Vec<String>,
}

/// Reads an output file record by record, keeping each record's exact bytes (terminator
/// included). A record ends at a line feed outside quotes; records are bounded in size.
struct RawRecords<'p> {
    reader: Box<dyn BufRead + 'p>,
    path: &'p Path,
    record: u64,
}

impl<'p> RawRecords<'p> {
    fn new(file: impl Read + 'p, path: &'p Path) -> Self {
        RawRecords {
            reader: Box::new(BufReader::new(file)),
            path,
            record: 0,
        }
    }

    fn malformed(&self, reason: String) -> OutputError {
        OutputError::Malformed {
            path: self.path.to_path_buf(),
            record: self.record,
            reason,
        }
    }

    /// The next record's bytes, or `None` at the end of the file.
    fn next_raw(&mut self) -> Result<Option<Vec<u8>>, OutputError> {
        let mut raw = Vec::new();
        let mut quotes = 0usize;
        loop {
            let start = raw.len();
            let limit = (MAX_RECORD_BYTES - start) as u64;
            (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut raw)
                .map_err(io_error("reading", self.path))?;
            if raw.len() == start {
                if raw.is_empty() {
                    return Ok(None);
                }
                self.record += 1;
                return Err(self.malformed("file ends inside a record (truncated?)".into()));
            }
            quotes += raw[start..].iter().filter(|b| **b == b'"').count();
            if raw.ends_with(b"\n") && quotes.is_multiple_of(2) {
                self.record += 1;
                return Ok(Some(raw));
            }
            if raw.len() >= MAX_RECORD_BYTES {
                self.record += 1;
                return Err(self.malformed(format!("record longer than {MAX_RECORD_BYTES} bytes")));
            }
        }
    }

    /// The next record's bytes and cells, checking it has `width` cells.
    fn next_cells(&mut self, width: usize) -> Result<Option<RawRecord>, OutputError> {
        let Some(raw) = self.next_raw()? else {
            return Ok(None);
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(raw.as_slice());
        let mut records = reader.records();
        let cells = match records.next() {
            Some(Ok(record)) => record.iter().map(str::to_owned).collect::<Vec<_>>(),
            Some(Err(e)) => return Err(self.malformed(e.to_string())),
            None => return Err(self.malformed("empty line".into())),
        };
        if records.next().is_some() {
            return Err(self.malformed("line holds more than one record".into()));
        }
        if cells.len() != width {
            return Err(self.malformed(format!("{} cells where {width} are expected", cells.len())));
        }
        Ok(Some(RawRecord { raw, cells }))
    }

    /// Reads the header and checks it is exactly `expected`; returns its bytes.
    fn expect_header(&mut self, expected: &[&str]) -> Result<Vec<u8>, OutputError> {
        match self.next_cells(expected.len())? {
            Some(RawRecord { raw, cells })
                if cells
                    .iter()
                    .map(String::as_str)
                    .eq(expected.iter().copied()) =>
            {
                Ok(raw)
            }
            Some(_) => Err(self.malformed("unexpected header".into())),
            None => Err(self.malformed("empty file, no header".into())),
        }
    }
}

#[cfg(test)]
#[path = "output_tests.rs"]
mod tests;
