//! The day's ratings as Parquet, for the warehouse (`[output] parquet = true`):
//! `<output dir>/parquet/business_date=YYYY-MM-DD/FirmESGRatings_YYYYMMDD.parquet`, one file per
//! business date in a Hive-partitioned tree (`docs/warehouse.md` has the schema and how to load it).
//!
//! Responsibilities:
//! - the typed row: each Parquet row is parsed from the ten cells the ratings file gets for that
//!   account ([`Record::from_cells`], the output of [`crate::output::format_row`], or the cells of
//!   a row a re-run copies), so the Parquet holds exactly the CSV's values: scores as
//!   DECIMAL(5,2) (null where the CSV shows `N/A`), the Analysis Date as DATE, the status as
//!   text. A cell that does not parse is an error naming the account and the column, never a
//!   guess; text cells lose the spreadsheet guard `'` the CSV puts before a formula trigger
//!   (applying the CSV's rule to the Parquet's text gives the CSV's cell back);
//! - bounded memory: rows are buffered column by column and written as a row group every
//!   [`ROWS_PER_GROUP`] rows, so a 1,000,000-account day holds one row group at a time;
//! - the file goes through the same `PendingFile` as every output: temporary name, age
//!   encryption as it streams when `[encryption]` is on (`….parquet.age`, no plaintext on disk),
//!   fsync, rename, directory fsync. The caller renames it before the ratings file, so a new
//!   ratings file never appears beside an older Parquet;
//! - erasure: `erase` rewrites a day's Parquet without some accounts (decrypting an encrypted
//!   one as it reads, through age's seekable stream, so no plaintext touches the disk here
//!   either).
//!
//! `business_date` is the partition key: it is in the directory name (Hive style, which DuckDB,
//! Spark, Hive, Trino and BigQuery read as a column) and in the file's key-value metadata
//! (`esg.business_date`), not a column of the file.
//!
//! Which days have one: the day's Parquet is written with the ratings file when
//! `[output] parquet = true`, and whenever that day already has one (so turning the key off
//! never leaves a Parquet that disagrees with a rewritten ratings file).

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use ::parquet::basic::Compression;
use ::parquet::data_type::{ByteArray, ByteArrayType, DataType, Int32Type};
use ::parquet::errors::ParquetError;
use ::parquet::file::metadata::KeyValue;
use ::parquet::file::properties::{WriterProperties, WriterVersion};
use ::parquet::file::reader::{ChunkReader, FileReader, Length};
use ::parquet::file::serialized_reader::SerializedFileReader;
use ::parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use ::parquet::record::Field;
use ::parquet::schema::types::Type;
use chrono::NaiveDate;
use esg_schemas::{Pillar, ScoreStatus};
use rust_decimal::Decimal;

use crate::encryption::{Protection, Sink, AGE_SUFFIX};
use crate::output::{
    ensure_dir, file_names, open_encrypted, sync_dir, unneutralise, OutputError, PendingFile,
    HEADER, NOT_AVAILABLE,
};

/// The directory under the output directory that holds the partitions.
pub const DIR: &str = "parquet";
/// The partition key (the directory `business_date=YYYY-MM-DD`).
pub const PARTITION_KEY: &str = "business_date";
/// The key-value metadata entry that holds the business date in the file itself.
pub const METADATA_BUSINESS_DATE: &str = "esg.business_date";
/// Rows per row group: what the writer holds in memory at most.
pub const ROWS_PER_GROUP: usize = 64 * 1024;
/// Largest score a DECIMAL(5,2) holds, in hundredths.
const MAX_HUNDREDTHS: i64 = 99_999;

/// The schema of the file, column for column the ratings file's (docs/warehouse.md).
pub const SCHEMA: &str = "
message esg_ratings {
  required binary account_id (STRING);
  required binary account_name (STRING);
  optional int32 overall_score (DECIMAL(5,2));
  optional int32 environmental_score (DECIMAL(5,2));
  optional int32 social_score (DECIMAL(5,2));
  optional int32 governance_score (DECIMAL(5,2));
  optional binary primary_focus (STRING);
  optional int32 primary_focus_score (DECIMAL(5,2));
  optional int32 analysis_date (DATE);
  required binary status (STRING);
}";

/// The column names, in file order (the ratings file's columns, in its order).
pub const COLUMNS: [&str; 10] = [
    "account_id",
    "account_name",
    "overall_score",
    "environmental_score",
    "social_score",
    "governance_score",
    "primary_focus",
    "primary_focus_score",
    "analysis_date",
    "status",
];

/// The file name of a business date's Parquet (before `.age`).
pub fn file_name(business_date: NaiveDate) -> String {
    file_names(business_date).csv.replace(".csv", ".parquet")
}

/// The partition directory of a business date.
pub fn partition_dir(output_dir: &Path, business_date: NaiveDate) -> PathBuf {
    output_dir.join(DIR).join(format!(
        "{PARTITION_KEY}={}",
        business_date.format("%Y-%m-%d")
    ))
}

/// Where the Parquet of a business date is on disk, as `protection` names it.
pub fn path(output_dir: &Path, business_date: NaiveDate, protection: &Protection) -> PathBuf {
    partition_dir(output_dir, business_date).join(protection.file_name(&file_name(business_date)))
}

/// True when the day has a Parquet, plaintext or encrypted.
pub fn exists(output_dir: &Path, business_date: NaiveDate) -> bool {
    let dir = partition_dir(output_dir, business_date);
    let name = file_name(business_date);
    dir.join(&name).exists() || dir.join(format!("{name}{AGE_SUFFIX}")).exists()
}

/// The partition directories under `output_dir` (none when there is no Parquet), sorted.
pub fn partition_dirs(output_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(output_dir.join(DIR)) else {
        return Vec::new();
    };
    let prefix = format!("{PARTITION_KEY}=");
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// Every day's Parquet under `output_dir` (plaintext or encrypted, not temporary files), sorted.
pub fn day_files(output_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in partition_dirs(output_dir) {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        files.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("FirmESGRatings_")
                        && name.trim_end_matches(AGE_SUFFIX).ends_with(".parquet")
                })
                .map(|e| e.path()),
        );
    }
    files.sort();
    files
}

/// Removes the partition directories left empty (after a purge), and the Parquet directory
/// when it is empty; a directory that still holds anything stays. Returns what it removed.
pub fn remove_empty_partitions(output_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for dir in partition_dirs(output_dir) {
        // `remove_dir` refuses a directory that is not empty: nothing else is ever removed.
        if fs::remove_dir(&dir).is_ok() {
            removed.push(dir);
        }
    }
    if !removed.is_empty() {
        let _ = fs::remove_dir(output_dir.join(DIR));
        let _ = sync_dir(output_dir);
    }
    removed
}

/// Creates the Parquet directory and the partition directory of `business_date` if missing, as
/// the output directory is (mode 0750; of the output directory's group, set-group-ID, when the
/// output directory is so: `[output] group`).
fn ensure_partition(output_dir: &Path, business_date: NaiveDate) -> Result<PathBuf, OutputError> {
    ensure_dir(output_dir)?;
    #[cfg(unix)]
    let group = {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(output_dir).map_err(|source| OutputError::Io {
            action: "reading permissions of",
            path: output_dir.to_path_buf(),
            source,
        })?;
        (meta.mode() & 0o2000 != 0).then_some(meta.gid())
    };
    #[cfg(not(unix))]
    let group = None;
    let partition = partition_dir(output_dir, business_date);
    for dir in [output_dir.join(DIR), partition.clone()] {
        crate::output::prepare_dir(&dir, group)?;
    }
    Ok(partition)
}

/// One row of the Parquet, typed. Scores are in hundredths (the DECIMAL(5,2)'s unscaled value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub account_id: String,
    pub account_name: String,
    pub overall: Option<i32>,
    pub environmental: Option<i32>,
    pub social: Option<i32>,
    pub governance: Option<i32>,
    pub primary_focus: Option<Pillar>,
    pub primary_focus_score: Option<i32>,
    pub analysis_date: Option<NaiveDate>,
    pub status: ScoreStatus,
}

/// A cell of the ratings file that has no Parquet value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{column} {cell:?} of account {account_id:?}: {reason}")]
pub struct CellError {
    pub account_id: String,
    /// The ratings file's column name.
    pub column: &'static str,
    pub cell: String,
    pub reason: String,
}

impl Record {
    /// The row of the ten cells of a ratings-file row, as the file holds them (neutralised).
    pub fn from_cells<S: AsRef<str>>(cells: &[S]) -> Result<Record, CellError> {
        let account_id = cells
            .first()
            .map_or("", |c| unneutralise(c.as_ref()))
            .to_owned();
        let fail = |index: usize, cell: &str, reason: String| CellError {
            account_id: account_id.clone(),
            column: HEADER.get(index).copied().unwrap_or("(extra cell)"),
            cell: cell.to_owned(),
            reason,
        };
        if cells.len() != HEADER.len() {
            return Err(fail(
                cells.len().min(HEADER.len()),
                "",
                format!("{} cells where {} are expected", cells.len(), HEADER.len()),
            ));
        }
        let cell = |i: usize| unneutralise(cells[i].as_ref());
        if account_id.is_empty() {
            return Err(fail(0, "", "an account id is required".into()));
        }
        let score = |i: usize| parse_score(cell(i)).map_err(|reason| fail(i, cell(i), reason));
        let primary_focus = match cell(6) {
            NOT_AVAILABLE => None,
            text => Some(Pillar::from_str(text).map_err(|reason| fail(6, text, reason))?),
        };
        let analysis_date = match cell(8) {
            NOT_AVAILABLE => None,
            text => Some(parse_date(text).map_err(|reason| fail(8, text, reason))?),
        };
        Ok(Record {
            account_name: cell(1).to_owned(),
            overall: score(2)?,
            environmental: score(3)?,
            social: score(4)?,
            governance: score(5)?,
            primary_focus,
            primary_focus_score: score(7)?,
            analysis_date,
            status: ScoreStatus::from_str(cell(9)).map_err(|reason| fail(9, cell(9), reason))?,
            account_id,
        })
    }
}

/// A score cell in hundredths: `N/A` is none; anything else must be a number with exactly two
/// decimals (as the file writes them) that DECIMAL(5,2) holds.
fn parse_score(cell: &str) -> Result<Option<i32>, String> {
    if cell == NOT_AVAILABLE {
        return Ok(None);
    }
    let value = Decimal::from_str_exact(cell).map_err(|e| format!("not a number: {e}"))?;
    if value.scale() != 2 || cell.contains(['e', 'E', '_']) {
        return Err("a score has exactly two decimals".into());
    }
    let hundredths = i64::try_from(value.mantissa())
        .ok()
        .filter(|h| h.abs() <= MAX_HUNDREDTHS)
        .ok_or("out of the range of DECIMAL(5,2) (-999.99 to 999.99)")?;
    Ok(Some(hundredths as i32))
}

/// An Analysis Date cell: `YYYY-MM-DD` exactly.
fn parse_date(cell: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(cell, "%Y-%m-%d")
        .ok()
        .filter(|d| d.format("%Y-%m-%d").to_string() == cell)
        .ok_or_else(|| "not a date YYYY-MM-DD".into())
}

/// Days since 1970-01-01 (Parquet's DATE).
fn epoch_days(date: NaiveDate) -> i32 {
    (date - NaiveDate::default()).num_days() as i32
}

fn from_epoch_days(days: i32) -> Option<NaiveDate> {
    NaiveDate::default().checked_add_signed(chrono::Duration::days(i64::from(days)))
}

fn parquet_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(ParquetError) -> OutputError + 'a {
    move |e| match e {
        // The file system's own errors (a full disk, say) stay io errors: worth trying again.
        ParquetError::External(inner) if inner.is::<io::Error>() => OutputError::Io {
            action,
            path: path.to_path_buf(),
            source: *inner
                .downcast::<io::Error>()
                .unwrap_or_else(|other| Box::new(io::Error::other(other))),
        },
        other => OutputError::Parquet {
            action,
            path: path.to_path_buf(),
            source: other,
        },
    }
}

/// An optional column of a row group: its values and its definition levels (0 is null).
#[derive(Default)]
struct Optional<T> {
    values: Vec<T>,
    levels: Vec<i16>,
}

impl<T> Optional<T> {
    fn push(&mut self, value: Option<T>) {
        match value {
            Some(v) => {
                self.values.push(v);
                self.levels.push(1);
            }
            None => self.levels.push(0),
        }
    }
}

/// The rows of one row group, column by column.
#[derive(Default)]
struct Group {
    account_id: Vec<ByteArray>,
    account_name: Vec<ByteArray>,
    scores: [Optional<i32>; 4],
    primary_focus: Optional<ByteArray>,
    primary_focus_score: Optional<i32>,
    analysis_date: Optional<i32>,
    status: Vec<ByteArray>,
}

impl Group {
    fn len(&self) -> usize {
        self.account_id.len()
    }

    fn push(&mut self, record: Record) {
        self.account_id
            .push(ByteArray::from(record.account_id.into_bytes()));
        self.account_name
            .push(ByteArray::from(record.account_name.into_bytes()));
        let [overall, environmental, social, governance] = &mut self.scores;
        overall.push(record.overall);
        environmental.push(record.environmental);
        social.push(record.social);
        governance.push(record.governance);
        self.primary_focus
            .push(record.primary_focus.map(|p| ByteArray::from(p.as_str())));
        self.primary_focus_score.push(record.primary_focus_score);
        self.analysis_date
            .push(record.analysis_date.map(epoch_days));
        self.status.push(ByteArray::from(record.status.as_str()));
    }
}

/// Writes `group` as one row group, column by column in schema order.
fn write_group(writer: &mut SerializedFileWriter<Sink>, group: &Group) -> Result<(), ParquetError> {
    let mut row_group = writer.next_row_group()?;
    let rg = &mut row_group;
    write_column::<ByteArrayType>(rg, &group.account_id, None)?;
    write_column::<ByteArrayType>(rg, &group.account_name, None)?;
    for score in &group.scores {
        write_column::<Int32Type>(rg, &score.values, Some(&score.levels))?;
    }
    let focus = &group.primary_focus;
    write_column::<ByteArrayType>(rg, &focus.values, Some(&focus.levels))?;
    for numbers in [&group.primary_focus_score, &group.analysis_date] {
        write_column::<Int32Type>(rg, &numbers.values, Some(&numbers.levels))?;
    }
    write_column::<ByteArrayType>(rg, &group.status, None)?;
    row_group.close()?;
    Ok(())
}

/// Writes the next column of `row_group`: `values` (the non-null ones) and, for an optional
/// column, the definition level of every row.
fn write_column<T: DataType>(
    row_group: &mut SerializedRowGroupWriter<'_, Sink>,
    values: &[T::T],
    levels: Option<&[i16]>,
) -> Result<(), ParquetError> {
    let mut column = row_group
        .next_column()?
        .ok_or_else(|| ParquetError::General("the schema has fewer columns than written".into()))?;
    column.typed::<T>().write_batch(values, levels, None)?;
    column.close()
}

/// A day's Parquet being written through a [`PendingFile`]; dropped without
/// [`ParquetWriter::seal`], it leaves no file (the previous one, if any, stays).
pub(crate) struct ParquetWriter {
    // Declared before `pending`: dropped before the temporary file is removed.
    writer: SerializedFileWriter<Sink>,
    pending: PendingFile,
    dir: PathBuf,
    group: Group,
    rows: u64,
}

/// A sealed Parquet, ready to be renamed into place.
pub(crate) struct SealedParquet {
    pub(crate) pending: PendingFile,
    pub(crate) dir: PathBuf,
}

impl SealedParquet {
    /// Renames the file into place and fsyncs its directory.
    pub(crate) fn persist(self) -> Result<PathBuf, OutputError> {
        let path = self.pending.persist()?;
        sync_dir(&self.dir)?;
        Ok(path)
    }
}

fn schema() -> Result<Arc<Type>, ParquetError> {
    ::parquet::schema::parser::parse_message_type(SCHEMA).map(Arc::new)
}

impl ParquetWriter {
    /// Starts the Parquet of `business_date` under `output_dir` (its partition directory
    /// created if missing), encrypted as `protection` says.
    pub(crate) fn create(
        output_dir: &Path,
        business_date: NaiveDate,
        protection: &Protection,
    ) -> Result<Self, OutputError> {
        let dir = ensure_partition(output_dir, business_date)?;
        let (pending, file) =
            PendingFile::create(&dir, &protection.file_name(&file_name(business_date)))?;
        let temp = pending.temp().to_path_buf();
        let sink = protection.sink(file).map_err(|source| OutputError::Io {
            action: "writing",
            path: temp.clone(),
            source,
        })?;
        let properties = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("esg {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                METADATA_BUSINESS_DATE.to_owned(),
                business_date.format("%Y-%m-%d").to_string(),
            )]))
            .build();
        let schema = schema().map_err(parquet_error("building the schema of", &temp))?;
        let writer = SerializedFileWriter::new(sink, schema, Arc::new(properties))
            .map_err(parquet_error("writing", &temp))?;
        Ok(ParquetWriter {
            writer,
            pending,
            dir,
            group: Group::default(),
            rows: 0,
        })
    }

    /// Adds the row of the ten cells the ratings file holds for it.
    pub(crate) fn write_cells<S: AsRef<str>>(&mut self, cells: &[S]) -> Result<(), OutputError> {
        let record = Record::from_cells(cells).map_err(|source| OutputError::Cell {
            path: self.pending.target().to_path_buf(),
            source: Box::new(source),
        })?;
        self.write(record)
    }

    /// Adds a row; every [`ROWS_PER_GROUP`] rows a row group is written.
    pub(crate) fn write(&mut self, record: Record) -> Result<(), OutputError> {
        self.group.push(record);
        self.rows += 1;
        if self.group.len() >= ROWS_PER_GROUP {
            self.flush_group()?;
        }
        Ok(())
    }

    /// Writes the buffered rows as one row group.
    fn flush_group(&mut self) -> Result<(), OutputError> {
        if self.group.len() == 0 {
            return Ok(());
        }
        let group = std::mem::take(&mut self.group);
        write_group(&mut self.writer, &group).map_err(parquet_error("writing", self.pending.temp()))
    }

    /// Writes the last row group and the footer, ends the content (the last age chunk when
    /// encrypted) and fsyncs the temporary file.
    pub(crate) fn seal(mut self) -> Result<SealedParquet, OutputError> {
        self.flush_group()?;
        let temp = self.pending.temp().to_path_buf();
        let ParquetWriter {
            writer,
            pending,
            dir,
            rows,
            ..
        } = self;
        let sink = writer
            .into_inner()
            .map_err(parquet_error("writing", &temp))?;
        pending.seal(sink)?;
        tracing::debug!(file = %pending.target().display(), rows, "parquet sealed");
        Ok(SealedParquet { pending, dir })
    }
}

/// The plaintext of an encrypted Parquet, for the Parquet reader: age's stream seeks, so the
/// reader takes the footer and then each column chunk without a plaintext copy anywhere.
struct Decrypted {
    stream: Mutex<Box<dyn ReadSeek>>,
    length: u64,
}

trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// A reader of [`Decrypted`] at an offset: every read seeks there first (the reader is shared).
struct DecryptedAt {
    source: Arc<Decrypted>,
    position: u64,
}

impl Read for DecryptedAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut stream = self
            .source
            .stream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stream.seek(SeekFrom::Start(self.position))?;
        let n = stream.read(buf)?;
        self.position += n as u64;
        Ok(n)
    }
}

/// [`Decrypted`] shared between the reader and the readers it hands out.
#[derive(Clone)]
struct SharedDecrypted(Arc<Decrypted>);

impl Length for SharedDecrypted {
    fn len(&self) -> u64 {
        self.0.length
    }
}

impl ChunkReader for SharedDecrypted {
    type T = BufReader<DecryptedAt>;

    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        Ok(BufReader::new(DecryptedAt {
            source: self.0.clone(),
            position: start,
        }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<bytes::Bytes, ParquetError> {
        let mut buffer = Vec::with_capacity(length);
        let mut at = DecryptedAt {
            source: self.0.clone(),
            position: start,
        };
        (&mut at).take(length as u64).read_to_end(&mut buffer)?;
        if buffer.len() != length {
            return Err(ParquetError::EOF(format!(
                "expected {length} bytes at {start}, the file has {}",
                buffer.len()
            )));
        }
        Ok(buffer.into())
    }
}

/// The records of the Parquet at `path`, one at a time.
fn read_records(
    path: &Path,
    reader: &dyn FileReader,
    mut each: impl FnMut(Record) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    let malformed = |reason: String| OutputError::Malformed {
        path: path.to_path_buf(),
        record: 0,
        reason,
    };
    let columns: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    if columns.iter().map(String::as_str).ne(COLUMNS) {
        return Err(malformed(format!(
            "not a ratings Parquet: columns {columns:?}"
        )));
    }
    let rows = reader
        .get_row_iter(None)
        .map_err(parquet_error("reading", path))?;
    for (index, row) in rows.enumerate() {
        let row = row.map_err(parquet_error("reading", path))?;
        let bad = |column: usize, field: &Field| {
            malformed(format!(
                "row {}: {} holds {field:?}",
                index + 1,
                COLUMNS[column]
            ))
        };
        let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        let text = |i: usize| match fields.get(i) {
            Some(Field::Str(s)) => Ok(Some(s.clone())),
            Some(Field::Null) => Ok(None),
            Some(other) => Err(bad(i, other)),
            None => Err(malformed(format!("row {}: too few columns", index + 1))),
        };
        let required = |i: usize| text(i)?.ok_or_else(|| bad(i, &Field::Null));
        let score = |i: usize| match fields.get(i) {
            Some(Field::Decimal(::parquet::data_type::Decimal::Int32 { value, .. })) => {
                Ok(Some(i32::from_be_bytes(*value)))
            }
            Some(Field::Null) => Ok(None),
            Some(other) => Err(bad(i, other)),
            None => Err(malformed(format!("row {}: too few columns", index + 1))),
        };
        let analysis_date = match fields.get(8) {
            Some(Field::Date(days)) => {
                Some(from_epoch_days(*days).ok_or_else(|| bad(8, &Field::Date(*days)))?)
            }
            Some(Field::Null) => None,
            Some(other) => return Err(bad(8, other)),
            None => return Err(malformed(format!("row {}: too few columns", index + 1))),
        };
        let primary_focus = match text(6)? {
            Some(p) => Some(Pillar::from_str(&p).map_err(malformed)?),
            None => None,
        };
        each(Record {
            account_id: required(0)?,
            account_name: required(1)?,
            overall: score(2)?,
            environmental: score(3)?,
            social: score(4)?,
            governance: score(5)?,
            primary_focus,
            primary_focus_score: score(7)?,
            analysis_date,
            status: ScoreStatus::from_str(&required(9)?).map_err(malformed)?,
        })?;
    }
    Ok(())
}

/// Erasure: rewrites the day's Parquet at `path` (`….parquet` or `….parquet.age`) without the
/// rows of `ids`, written as `protection` says (the caller passes the protection the file keeps:
/// plaintext for a plaintext file); returns how many rows it dropped, and leaves a file that
/// holds none of them untouched. An encrypted file is read through age with one of
/// `identities`. Atomic like every output.
pub(crate) fn erase(
    path: &Path,
    ids: &std::collections::HashSet<String>,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    protection: &Protection,
) -> Result<u64, OutputError> {
    let refuse = |why: &str| OutputError::Io {
        action: "erase accounts from",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, why.to_owned()),
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(refuse("not a file name"));
    };
    let business_date = name
        .strip_prefix("FirmESGRatings_")
        .and_then(|rest| rest.get(..8))
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        .ok_or_else(|| refuse("not a day's Parquet (FirmESGRatings_YYYYMMDD.parquet)"))?;
    let reader: Box<dyn FileReader> = if name.ends_with(AGE_SUFFIX) {
        let mut stream = open_encrypted(path, "erase accounts from", identities)?;
        let length = stream
            .seek(SeekFrom::End(0))
            .map_err(|source| OutputError::Io {
                action: "reading",
                path: path.to_path_buf(),
                source,
            })?;
        let source = SharedDecrypted(Arc::new(Decrypted {
            stream: Mutex::new(Box::new(stream)),
            length,
        }));
        Box::new(SerializedFileReader::new(source).map_err(parquet_error("reading", path))?)
    } else {
        let file = File::open(path).map_err(|source| OutputError::Io {
            action: "opening",
            path: path.to_path_buf(),
            source,
        })?;
        Box::new(SerializedFileReader::new(file).map_err(parquet_error("reading", path))?)
    };
    // A first pass counts the rows to drop: a file without any is not rewritten.
    let mut removed = 0u64;
    read_records(path, reader.as_ref(), |record| {
        removed += u64::from(ids.contains(&record.account_id));
        Ok(())
    })?;
    if removed == 0 {
        return Ok(0);
    }
    // The output directory is two levels up (`<out>/parquet/business_date=…/`).
    let output_dir = dir
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| refuse("not in a partition directory"))?;
    let mut writer = ParquetWriter::create(output_dir, business_date, protection)?;
    if writer.pending.target() != path {
        return Err(refuse(
            "not where the day's Parquet is kept (<output dir>/parquet/business_date=YYYY-MM-DD/)",
        ));
    }
    read_records(path, reader.as_ref(), |record| {
        if ids.contains(&record.account_id) {
            Ok(())
        } else {
            writer.write(record)
        }
    })?;
    writer.seal()?.persist()?;
    Ok(removed)
}

#[cfg(test)]
#[path = "parquet_tests.rs"]
mod tests;
