//! Avro encoding of [`Event`]s: explicit conversion to and from [`Value`] so that every field's
//! logical type (decimal scale 4, date, timestamp-millis) is exactly the one the `.avsc` says.

use crate::events::*;
use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;

/// A schema as shipped in `schemas/avro/`.
#[derive(Debug, Clone, Copy)]
pub struct SchemaSource {
    /// Record name (`EsgScore`).
    pub name: &'static str,
    /// The `.avsc` text.
    pub text: &'static str,
}

/// Every schema of the pipeline.
pub const SCHEMAS: &[SchemaSource] = &[
    SchemaSource {
        name: "DailyTrigger",
        text: include_str!("../avro/DailyTrigger.avsc"),
    },
    SchemaSource {
        name: "RunSealed",
        text: include_str!("../avro/RunSealed.avsc"),
    },
    SchemaSource {
        name: "RunCompleted",
        text: include_str!("../avro/RunCompleted.avsc"),
    },
    SchemaSource {
        name: "AccountChanged",
        text: include_str!("../avro/AccountChanged.avsc"),
    },
    SchemaSource {
        name: "AccountEntry",
        text: include_str!("../avro/AccountEntry.avsc"),
    },
    SchemaSource {
        name: "EsgScore",
        text: include_str!("../avro/EsgScore.avsc"),
    },
];

/// One released schema: `released!("v1", "EsgScore")` is `schemas/avro/released/v1/EsgScore.avsc`.
macro_rules! released {
    ($version:literal, $name:literal) => {
        (
            $version,
            SchemaSource {
                name: $name,
                text: include_str!(concat!("../avro/released/", $version, "/", $name, ".avsc")),
            },
        )
    };
}

/// Every released version of the schemas (`schemas/avro/released/`), oldest first: records on
/// the bus may have been written with any of them, and [`Codec::decode`] reads them all into the
/// current types (BACKWARD compatibility, checked by `tests/compatibility.rs`).
///
/// - v1: the first release.
/// - v2: `AccountChanged.prior` (the stored analysis and its ETag), `EsgScore.requests` and
///   `EsgScore.etag`, all with defaults.
/// - v3: `AccountChanged.account_name` removed (the scorer never needed it; names are only on
///   `esg.accounts`). Readers ignore the name in v1 and v2 records. Not FORWARD compatible: a v2
///   reader cannot read a v3 record (the v2 name has no default), so scorers and assemblers are
///   upgraded before the producer.
/// - v4: `EsgScore.rate_limited_requests` (of `requests`, those answered 429), default 0:
///   records written with v1 to v3 read with 0.
pub const RELEASED: &[(&str, SchemaSource)] = &[
    released!("v1", "DailyTrigger"),
    released!("v1", "RunSealed"),
    released!("v1", "RunCompleted"),
    released!("v1", "AccountChanged"),
    released!("v1", "AccountEntry"),
    released!("v1", "EsgScore"),
    released!("v2", "DailyTrigger"),
    released!("v2", "RunSealed"),
    released!("v2", "RunCompleted"),
    released!("v2", "AccountChanged"),
    released!("v2", "AccountEntry"),
    released!("v2", "EsgScore"),
    released!("v3", "DailyTrigger"),
    released!("v3", "RunSealed"),
    released!("v3", "RunCompleted"),
    released!("v3", "AccountChanged"),
    released!("v3", "AccountEntry"),
    released!("v3", "EsgScore"),
    released!("v4", "DailyTrigger"),
    released!("v4", "RunSealed"),
    released!("v4", "RunCompleted"),
    released!("v4", "AccountChanged"),
    released!("v4", "AccountEntry"),
    released!("v4", "EsgScore"),
];

/// Scale of every decimal on the bus.
pub const DECIMAL_SCALE: u32 = 4;
/// Precision of every decimal on the bus.
pub const DECIMAL_PRECISION: u32 = 9;
const MAX_UNSCALED: u32 = 999_999_999;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("schema {name} does not parse: {source}")]
    Schema {
        name: &'static str,
        source: apache_avro::Error,
    },
    #[error("message is not Avro single-object encoded (missing C3 01 marker)")]
    NotSingleObject,
    #[error("message written with an unknown schema (fingerprint {0})")]
    UnknownSchema(String),
    #[error("{record}: {source}")]
    Avro {
        record: &'static str,
        source: apache_avro::Error,
    },
    #[error("{record}.{field}: {problem}")]
    Field {
        record: &'static str,
        field: &'static str,
        problem: String,
    },
}

struct Entry {
    name: &'static str,
    schema: Schema,
    fingerprint: [u8; 8],
}

/// Encodes and decodes pipeline events. Cheap to share (`Arc`) across tasks.
pub struct Codec {
    entries: Vec<Entry>,
    /// Every schema a record may have been written with (current and released), by fingerprint:
    /// the index of the current entry of the same record, and the writer schema.
    writers: HashMap<[u8; 8], (usize, Schema)>,
}

fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp.bytes[..8]);
    out
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field(
                "schemas",
                &self.entries.iter().map(|e| e.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Codec {
    /// Parses every schema of [`SCHEMAS`] (to write and read) and of [`RELEASED`] (to read).
    pub fn new() -> Result<Self, CodecError> {
        let mut entries = Vec::new();
        for source in SCHEMAS {
            let schema = Schema::parse_str(source.text).map_err(|e| CodecError::Schema {
                name: source.name,
                source: e,
            })?;
            entries.push(Entry {
                name: source.name,
                fingerprint: fingerprint(&schema),
                schema,
            });
        }
        let mut codec = Codec {
            writers: entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.fingerprint, (i, e.schema.clone())))
                .collect(),
            entries,
        };
        for (_, source) in RELEASED {
            codec.add_writer_schema(source.name, source.text)?;
        }
        Ok(codec)
    }

    /// Accepts records written with another version of a record's schema (it must be one the
    /// current schema can read). For tools that read old logs, and for tests.
    pub fn add_writer_schema(&mut self, name: &'static str, text: &str) -> Result<(), CodecError> {
        let schema = Schema::parse_str(text).map_err(|e| CodecError::Schema { name, source: e })?;
        let idx = self
            .entries
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| CodecError::UnknownSchema(name.to_owned()))?;
        self.writers.insert(fingerprint(&schema), (idx, schema));
        Ok(())
    }

    fn entry(&self, name: &str) -> &Entry {
        // Every record name used below is one of SCHEMAS, checked by the tests.
        self.entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or(&self.entries[0])
    }

    /// The parsed schema of a record.
    pub fn schema(&self, name: &str) -> Option<&Schema> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.schema)
    }

    /// The Avro datum of `event` alone (no header): what follows the Confluent wire-format header.
    pub fn encode_datum(&self, event: &Event) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(128);
        self.write_datum(event, &mut out)?;
        Ok(out)
    }

    /// Appends the datum of `event` to `out`: the per-account records directly ([`direct`]),
    /// the others through the generic writer.
    fn write_datum(&self, event: &Event, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if direct::write(event, out)? {
            return Ok(());
        }
        out.extend_from_slice(&self.generic_datum(event)?);
        Ok(())
    }

    /// The datum of `event` written by apache-avro from a [`Value`]: the reference the direct
    /// writer is checked against.
    fn generic_datum(&self, event: &Event) -> Result<Vec<u8>, CodecError> {
        let record = event.record_name();
        let entry = self.entry(record);
        let value = to_value(event)?;
        GenericDatumWriter::builder(&entry.schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .map_err(|e| CodecError::Avro { record, source: e })
    }

    /// Single-object encoding: `C3 01`, fingerprint, datum.
    pub fn encode(&self, event: &Event) -> Result<Vec<u8>, CodecError> {
        let entry = self.entry(event.record_name());
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[0xC3, 0x01]);
        out.extend_from_slice(&entry.fingerprint);
        self.write_datum(event, &mut out)?;
        Ok(out)
    }

    /// Decodes a single-object encoded message.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, CodecError> {
        if bytes.len() < 10 || bytes[0] != 0xC3 || bytes[1] != 0x01 {
            return Err(CodecError::NotSingleObject);
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&bytes[2..10]);
        let (idx, writer) = self
            .writers
            .get(&fp)
            .ok_or_else(|| CodecError::UnknownSchema(hex(&fp)))?;
        let current = &self.entries[*idx];
        if current.fingerprint == fp {
            return self.decode_datum(current.name, &bytes[10..]);
        }
        // Written with an older schema: resolve it to the current one.
        let record = current.name;
        let mut datum = &bytes[10..];
        let value = GenericDatumReader::builder(writer)
            .maybe_reader_schema(Some(&current.schema))
            .build()
            .and_then(|r| r.read_value(&mut datum))
            .map_err(|e| CodecError::Avro { record, source: e })?;
        from_value(record, value)
    }

    /// Parses a schema a record may have been written with (from a schema registry, say): it
    /// must be a version of one of the pipeline's records that the current schema can read.
    /// Returns the record name and the parsed writer schema for [`Codec::decode_datum_with`].
    pub fn parse_writer(&self, text: &str) -> Result<(&'static str, Schema), CodecError> {
        let schema = Schema::parse_str(text).map_err(|e| CodecError::Schema {
            name: "writer schema",
            source: e,
        })?;
        let name = match &schema {
            Schema::Record(r) => r.name.name().to_owned(),
            _ => String::new(),
        };
        let entry = self
            .entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| CodecError::UnknownSchema(format!("record {name:?}")))?;
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&schema, &entry.schema)
            .map_err(|e| CodecError::Field {
                record: entry.name,
                field: "(schema)",
                problem: format!("the current schema cannot read this writer schema: {e}"),
            })?;
        Ok((entry.name, schema))
    }

    /// True when `writer` is the current schema of `record_name` (the same fingerprint): its
    /// datums can be read with [`Codec::decode_datum`], without schema resolution. For callers
    /// that keep writer schemas, to ask once rather than per datum.
    pub fn is_current(&self, record_name: &str, writer: &Schema) -> bool {
        self.entries
            .iter()
            .any(|e| e.name == record_name && e.fingerprint == fingerprint(writer))
    }

    /// Decodes a bare datum written with `writer` (a version of `record_name`'s schema),
    /// resolving it to the current schema.
    pub fn decode_datum_with(
        &self,
        record_name: &str,
        writer: &Schema,
        mut datum: &[u8],
    ) -> Result<Event, CodecError> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.name == record_name)
            .ok_or_else(|| CodecError::UnknownSchema(record_name.to_owned()))?;
        let record = entry.name;
        let value = GenericDatumReader::builder(writer)
            .maybe_reader_schema(Some(&entry.schema))
            .build()
            .and_then(|r| r.read_value(&mut datum))
            .map_err(|e| CodecError::Avro { record, source: e })?;
        from_value(record, value)
    }

    /// Decodes a bare datum written with the named record's schema.
    pub fn decode_datum(&self, record_name: &str, datum: &[u8]) -> Result<Event, CodecError> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.name == record_name)
            .ok_or_else(|| CodecError::UnknownSchema(record_name.to_owned()))?;
        // The direct reader knows the per-account records; whatever it does not accept (a
        // record it does not know, a datum it finds malformed) the generic reader reads, so
        // values and errors are the generic reader's.
        if let Some(event) = direct::read(entry.name, datum) {
            return Ok(event);
        }
        self.generic_decode_datum(entry, datum)
    }

    /// [`Codec::decode_datum`] through apache-avro's generic reader and a [`Value`].
    fn generic_decode_datum(&self, entry: &Entry, mut datum: &[u8]) -> Result<Event, CodecError> {
        let record = entry.name;
        let value = GenericDatumReader::builder(&entry.schema)
            .build()
            .and_then(|r| r.read_value(&mut datum))
            .map_err(|e| CodecError::Avro { record, source: e })?;
        from_value(record, value)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- encoding --------------------------------------------------------------------------------

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}
fn date(d: NaiveDate) -> Value {
    Value::Date(days_since_epoch(d))
}
fn ts(t: DateTime<Utc>) -> Value {
    Value::TimestampMillis(t.timestamp_millis())
}
fn opt(v: Option<Value>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (d - epoch).num_days() as i32
}

fn decimal(record: &'static str, field: &'static str, d: Decimal) -> Result<Value, CodecError> {
    Ok(Value::Decimal(apache_avro::Decimal::from(
        unscaled(record, field, d)?.to_be_bytes(),
    )))
}

/// The unscaled value of `d` at scale 4, refused when it has more than 4 decimal places or
/// more than 9 digits.
fn unscaled(record: &'static str, field: &'static str, d: Decimal) -> Result<i32, CodecError> {
    let mut d = d;
    if d.scale() > DECIMAL_SCALE {
        return Err(CodecError::Field {
            record,
            field,
            problem: format!("{d} has more than {DECIMAL_SCALE} decimal places"),
        });
    }
    d.rescale(DECIMAL_SCALE);
    let mantissa = d.mantissa();
    // Precision 9: at most 9 digits, so the unscaled value always fits 4 bytes. Always writing
    // 4 bytes (big-endian two's complement) keeps schema resolution happy, which insists that
    // the byte length can hold the full precision.
    i32::try_from(mantissa)
        .ok()
        .filter(|m| m.unsigned_abs() <= MAX_UNSCALED)
        .ok_or_else(|| CodecError::Field {
            record,
            field,
            problem: format!("{d} needs more than {DECIMAL_PRECISION} digits"),
        })
}

fn opt_decimal(
    record: &'static str,
    field: &'static str,
    d: Option<Decimal>,
) -> Result<Value, CodecError> {
    Ok(opt(d.map(|d| decimal(record, field, d)).transpose()?))
}

/// The seven ESG value fields (`overall` … `analysis_date`) of `record`, in schema order.
fn value_fields(
    record: &'static str,
    v: &EsgValues,
) -> Result<Vec<(&'static str, Value)>, CodecError> {
    Ok(vec![
        ("overall", opt_decimal(record, "overall", v.overall)?),
        (
            "environmental",
            opt_decimal(record, "environmental", v.environmental)?,
        ),
        ("social", opt_decimal(record, "social", v.social)?),
        (
            "governance",
            opt_decimal(record, "governance", v.governance)?,
        ),
        (
            "primary_focus",
            opt(v
                .primary_focus
                .map(|p| Value::Enum(p.index(), p.as_str().into()))),
        ),
        (
            "primary_focus_score",
            opt_decimal(record, "primary_focus_score", v.primary_focus_score)?,
        ),
        ("analysis_date", opt(v.analysis_date.map(date))),
    ])
}

/// The `PriorAnalysis` record of an `AccountChanged`.
fn prior_value(p: &PriorAnalysis) -> Result<Value, CodecError> {
    let fields = [("etag", s(&p.etag))]
        .into_iter()
        .chain(value_fields("PriorAnalysis", &p.values)?);
    Ok(Value::Record(
        fields.map(|(k, v)| (k.to_owned(), v)).collect(),
    ))
}

fn to_value(event: &Event) -> Result<Value, CodecError> {
    let fields: Vec<(&str, Value)> = match event {
        Event::DailyTrigger(t) => vec![
            ("run_id", s(&t.run_id)),
            ("business_date", date(t.business_date)),
            ("kind", Value::Enum(t.kind.index(), t.kind.as_str().into())),
            ("full", Value::Boolean(t.full)),
            ("deadline", ts(t.deadline)),
            ("triggered_at", ts(t.triggered_at)),
        ],
        Event::RunSealed(r) => vec![
            ("run_id", s(&r.run_id)),
            ("business_date", date(r.business_date)),
            ("expected_accounts", Value::Long(r.expected_accounts)),
            ("active_accounts", Value::Long(r.active_accounts)),
            ("new_accounts", Value::Long(r.new_accounts)),
            ("changed_accounts", Value::Long(r.changed_accounts)),
            ("stale_accounts", Value::Long(r.stale_accounts)),
            ("retry_accounts", Value::Long(r.retry_accounts)),
            ("forced_accounts", Value::Long(r.forced_accounts)),
            ("carried_forward", Value::Long(r.carried_forward)),
            ("gone_accounts", Value::Long(r.gone_accounts)),
            ("malformed_records", Value::Long(r.malformed_records)),
            ("sealed_at", ts(r.sealed_at)),
        ],
        Event::RunCompleted(r) => vec![
            ("run_id", s(&r.run_id)),
            ("business_date", date(r.business_date)),
            (
                "outcome",
                Value::Enum(r.outcome.index(), r.outcome.as_str().into()),
            ),
            ("rows", Value::Long(r.rows)),
            ("successful", Value::Long(r.successful)),
            ("partial", Value::Long(r.partial)),
            ("failed", Value::Long(r.failed)),
            ("output_file", s(&r.output_file)),
            ("completed_at", ts(r.completed_at)),
        ],
        Event::AccountChanged(a) => vec![
            ("run_id", s(&a.run_id)),
            ("account_id", s(&a.account_id)),
            ("version", Value::Long(a.version)),
            (
                "reason",
                Value::Enum(a.reason.index(), a.reason.as_str().into()),
            ),
            ("emitted_at", ts(a.emitted_at)),
            ("prior", opt(a.prior.as_ref().map(prior_value).transpose()?)),
        ],
        Event::AccountEntry(a) => vec![
            ("account_id", s(&a.account_id)),
            ("account_name", s(&a.account_name)),
            ("version", Value::Long(a.version)),
            ("updated_at", ts(a.updated_at)),
            ("run_id", s(&a.run_id)),
        ],
        Event::EsgScore(e) => {
            const R: &str = "EsgScore";
            vec![
                ("run_id", s(&e.run_id)),
                ("account_id", s(&e.account_id)),
                ("account_version", Value::Long(e.account_version)),
                (
                    "status",
                    Value::Enum(e.status.index(), e.status.as_str().into()),
                ),
            ]
            .into_iter()
            .chain(value_fields(R, &e.values)?)
            .chain([
                ("attempts", Value::Int(e.attempts)),
                ("error_code", opt(e.error_code.as_deref().map(s))),
                ("error_message", opt(e.error_message.as_deref().map(s))),
                ("scored_at", ts(e.scored_at)),
                ("source_partition", Value::Int(e.source_partition)),
                ("source_offset", Value::Long(e.source_offset)),
                ("requests", Value::Int(e.requests)),
                ("etag", opt(e.etag.as_deref().map(s))),
                ("rate_limited_requests", Value::Int(e.rate_limited_requests)),
            ])
            .collect()
        }
    };
    Ok(Value::Record(
        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    ))
}

// ---- decoding --------------------------------------------------------------------------------

struct Fields {
    record: &'static str,
    map: HashMap<String, Value>,
}

impl Fields {
    fn new(record: &'static str, value: Value) -> Result<Self, CodecError> {
        match value {
            Value::Record(fields) => Ok(Fields {
                record,
                map: fields.into_iter().collect(),
            }),
            other => Err(CodecError::Field {
                record,
                field: "",
                problem: format!("expected a record, got {other:?}"),
            }),
        }
    }

    fn bad(&self, field: &'static str, v: &Value) -> CodecError {
        CodecError::Field {
            record: self.record,
            field,
            problem: format!("unexpected value {v:?}"),
        }
    }

    fn take(&mut self, field: &'static str) -> Result<Value, CodecError> {
        let v = self.map.remove(field).ok_or(CodecError::Field {
            record: self.record,
            field,
            problem: "missing".into(),
        })?;
        // Unwrap unions: a null branch becomes Null, any other branch its value.
        Ok(match v {
            Value::Union(_, inner) => *inner,
            v => v,
        })
    }

    fn string(&mut self, f: &'static str) -> Result<String, CodecError> {
        match self.take(f)? {
            Value::String(s) => Ok(s),
            v => Err(self.bad(f, &v)),
        }
    }
    fn opt_string(&mut self, f: &'static str) -> Result<Option<String>, CodecError> {
        match self.take(f)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            v => Err(self.bad(f, &v)),
        }
    }
    fn long(&mut self, f: &'static str) -> Result<i64, CodecError> {
        match self.take(f)? {
            Value::Long(n) => Ok(n),
            Value::Int(n) => Ok(n.into()),
            v => Err(self.bad(f, &v)),
        }
    }
    fn int(&mut self, f: &'static str) -> Result<i32, CodecError> {
        match self.take(f)? {
            Value::Int(n) => Ok(n),
            v => Err(self.bad(f, &v)),
        }
    }
    fn boolean(&mut self, f: &'static str) -> Result<bool, CodecError> {
        match self.take(f)? {
            Value::Boolean(b) => Ok(b),
            v => Err(self.bad(f, &v)),
        }
    }
    fn ts(&mut self, f: &'static str) -> Result<DateTime<Utc>, CodecError> {
        match self.take(f)? {
            Value::TimestampMillis(ms) | Value::Long(ms) => {
                DateTime::from_timestamp_millis(ms).ok_or_else(|| self.bad(f, &Value::Long(ms)))
            }
            v => Err(self.bad(f, &v)),
        }
    }
    fn date_value(&self, f: &'static str, v: Value) -> Result<Option<NaiveDate>, CodecError> {
        match v {
            Value::Null => Ok(None),
            Value::Date(days) | Value::Int(days) => {
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
                epoch
                    .checked_add_signed(chrono::Duration::days(days.into()))
                    .map(Some)
                    .ok_or_else(|| self.bad(f, &Value::Int(days)))
            }
            v => Err(self.bad(f, &v)),
        }
    }
    fn date(&mut self, f: &'static str) -> Result<NaiveDate, CodecError> {
        let v = self.take(f)?;
        self.date_value(f, v)?
            .ok_or_else(|| self.bad(f, &Value::Null))
    }
    fn opt_date(&mut self, f: &'static str) -> Result<Option<NaiveDate>, CodecError> {
        let v = self.take(f)?;
        self.date_value(f, v)
    }
    fn symbol<T: std::str::FromStr>(&mut self, f: &'static str) -> Result<T, CodecError> {
        match self.take(f)? {
            Value::Enum(_, sym) => sym.parse().map_err(|_| self.bad(f, &Value::String(sym))),
            v => Err(self.bad(f, &v)),
        }
    }
    fn opt_symbol<T: std::str::FromStr>(
        &mut self,
        f: &'static str,
    ) -> Result<Option<T>, CodecError> {
        match self.take(f)? {
            Value::Null => Ok(None),
            Value::Enum(_, sym) => sym
                .parse()
                .map(Some)
                .map_err(|_| self.bad(f, &Value::String(sym))),
            v => Err(self.bad(f, &v)),
        }
    }
    /// The seven ESG value fields ([`value_fields`]).
    fn values(&mut self) -> Result<EsgValues, CodecError> {
        Ok(EsgValues {
            overall: self.opt_decimal("overall")?,
            environmental: self.opt_decimal("environmental")?,
            social: self.opt_decimal("social")?,
            governance: self.opt_decimal("governance")?,
            primary_focus: self.opt_symbol("primary_focus")?,
            primary_focus_score: self.opt_decimal("primary_focus_score")?,
            analysis_date: self.opt_date("analysis_date")?,
        })
    }
    fn opt_prior(&mut self, f: &'static str) -> Result<Option<PriorAnalysis>, CodecError> {
        match self.take(f)? {
            Value::Null => Ok(None),
            record @ Value::Record(_) => {
                let mut p = Fields::new("PriorAnalysis", record)?;
                Ok(Some(PriorAnalysis {
                    etag: p.string("etag")?,
                    values: p.values()?,
                }))
            }
            v => Err(self.bad(f, &v)),
        }
    }
    fn opt_decimal(&mut self, f: &'static str) -> Result<Option<Decimal>, CodecError> {
        match self.take(f)? {
            Value::Null => Ok(None),
            Value::Decimal(d) => {
                let bytes: Vec<u8> =
                    Vec::try_from(&d).map_err(|e| self.bad(f, &Value::String(e.to_string())))?;
                if bytes.is_empty() || bytes.len() > 16 {
                    return Err(self.bad(f, &Value::Bytes(bytes)));
                }
                let fill = if bytes[0] & 0x80 != 0 { 0xFF } else { 0x00 };
                let mut full = [fill; 16];
                full[16 - bytes.len()..].copy_from_slice(&bytes);
                let mantissa = i128::from_be_bytes(full);
                Decimal::try_from_i128_with_scale(mantissa, DECIMAL_SCALE)
                    .map(Some)
                    .map_err(|e| self.bad(f, &Value::String(e.to_string())))
            }
            v => Err(self.bad(f, &v)),
        }
    }
}

fn from_value(record: &'static str, value: Value) -> Result<Event, CodecError> {
    let mut f = Fields::new(record, value)?;
    Ok(match record {
        "DailyTrigger" => Event::DailyTrigger(DailyTrigger {
            run_id: f.string("run_id")?,
            business_date: f.date("business_date")?,
            kind: f.symbol("kind")?,
            full: f.boolean("full")?,
            deadline: f.ts("deadline")?,
            triggered_at: f.ts("triggered_at")?,
        }),
        "RunSealed" => Event::RunSealed(RunSealed {
            run_id: f.string("run_id")?,
            business_date: f.date("business_date")?,
            expected_accounts: f.long("expected_accounts")?,
            active_accounts: f.long("active_accounts")?,
            new_accounts: f.long("new_accounts")?,
            changed_accounts: f.long("changed_accounts")?,
            stale_accounts: f.long("stale_accounts")?,
            retry_accounts: f.long("retry_accounts")?,
            forced_accounts: f.long("forced_accounts")?,
            carried_forward: f.long("carried_forward")?,
            gone_accounts: f.long("gone_accounts")?,
            malformed_records: f.long("malformed_records")?,
            sealed_at: f.ts("sealed_at")?,
        }),
        "RunCompleted" => Event::RunCompleted(RunCompleted {
            run_id: f.string("run_id")?,
            business_date: f.date("business_date")?,
            outcome: f.symbol("outcome")?,
            rows: f.long("rows")?,
            successful: f.long("successful")?,
            partial: f.long("partial")?,
            failed: f.long("failed")?,
            output_file: f.string("output_file")?,
            completed_at: f.ts("completed_at")?,
        }),
        "AccountChanged" => Event::AccountChanged(AccountChanged {
            run_id: f.string("run_id")?,
            account_id: f.string("account_id")?,
            version: f.long("version")?,
            reason: f.symbol("reason")?,
            emitted_at: f.ts("emitted_at")?,
            prior: f.opt_prior("prior")?,
        }),
        "AccountEntry" => Event::AccountEntry(AccountEntry {
            account_id: f.string("account_id")?,
            account_name: f.string("account_name")?,
            version: f.long("version")?,
            updated_at: f.ts("updated_at")?,
            run_id: f.string("run_id")?,
        }),
        "EsgScore" => Event::EsgScore(EsgScore {
            run_id: f.string("run_id")?,
            account_id: f.string("account_id")?,
            account_version: f.long("account_version")?,
            status: f.symbol("status")?,
            values: f.values()?,
            attempts: f.int("attempts")?,
            error_code: f.opt_string("error_code")?,
            error_message: f.opt_string("error_message")?,
            scored_at: f.ts("scored_at")?,
            source_partition: f.int("source_partition")?,
            source_offset: f.long("source_offset")?,
            requests: f.int("requests")?,
            etag: f.opt_string("etag")?,
            rate_limited_requests: f.int("rate_limited_requests")?,
        }),
        other => return Err(CodecError::UnknownSchema(other.to_owned())),
    })
}

// ---- direct encoding of the per-account records ---------------------------------------------

/// Avro binary of the per-account records (`AccountEntry`, `AccountChanged` with its
/// `PriorAnalysis`, `EsgScore`), written and read in the layout of their current schemas
/// without building a [`Value`] tree. Each crosses the bus once per account and is read two or
/// three times; through `Value` (field names as strings, boxed unions, the schema resolved on
/// every call) the codec cost more CPU than the log that stores the bytes.
///
/// The field order is the schemas'; `tests::direct_*` check the bytes against the generic
/// writer and reader field by field (every null and non-null branch, every enum symbol,
/// decimals at the limits) and the field lists against the `.avsc` files, so a schema change
/// that is not made here too fails the tests. Other records go through the generic writer and
/// reader, and so does every datum [`read`] does not accept.
mod direct {
    use super::{unscaled, DECIMAL_SCALE};
    use crate::events::*;
    use chrono::{DateTime, NaiveDate, Utc};
    use rust_decimal::Decimal;

    /// Field names of the records written here, in schema order (checked by the tests).
    #[cfg(test)]
    pub(super) const FIELDS: &[(&str, &[&str])] = &[
        (
            "AccountEntry",
            &[
                "account_id",
                "account_name",
                "version",
                "updated_at",
                "run_id",
            ],
        ),
        (
            "AccountChanged",
            &[
                "run_id",
                "account_id",
                "version",
                "reason",
                "emitted_at",
                "prior",
            ],
        ),
        (
            "PriorAnalysis",
            &[
                "etag",
                "overall",
                "environmental",
                "social",
                "governance",
                "primary_focus",
                "primary_focus_score",
                "analysis_date",
            ],
        ),
        (
            "EsgScore",
            &[
                "run_id",
                "account_id",
                "account_version",
                "status",
                "overall",
                "environmental",
                "social",
                "governance",
                "primary_focus",
                "primary_focus_score",
                "analysis_date",
                "attempts",
                "error_code",
                "error_message",
                "scored_at",
                "source_partition",
                "source_offset",
                "requests",
                "etag",
                "rate_limited_requests",
            ],
        ),
    ];

    /// Appends the datum of `event` to `out` when it is a record written here (`Ok(true)`);
    /// `Ok(false)` leaves `out` untouched. Refuses what the generic path refuses, with the same
    /// error (decimals are checked in field order, like [`super::to_value`]).
    pub(super) fn write(event: &Event, out: &mut Vec<u8>) -> Result<bool, super::CodecError> {
        match event {
            Event::AccountEntry(a) => {
                string(out, &a.account_id);
                string(out, &a.account_name);
                long(out, a.version);
                timestamp(out, a.updated_at);
                string(out, &a.run_id);
            }
            Event::AccountChanged(a) => {
                // Checked before anything is written, so a refused event leaves `out` as it was.
                let prior = a
                    .prior
                    .as_ref()
                    .map(|p| Ok::<_, super::CodecError>((p, checked("PriorAnalysis", &p.values)?)))
                    .transpose()?;
                string(out, &a.run_id);
                string(out, &a.account_id);
                long(out, a.version);
                long(out, i64::from(a.reason.index()));
                timestamp(out, a.emitted_at);
                match prior {
                    None => out.push(NULL),
                    Some((p, unscaled)) => {
                        out.push(SOME);
                        string(out, &p.etag);
                        values(out, &p.values, &unscaled);
                    }
                }
            }
            Event::EsgScore(e) => {
                let unscaled = checked("EsgScore", &e.values)?;
                string(out, &e.run_id);
                string(out, &e.account_id);
                long(out, e.account_version);
                long(out, i64::from(e.status.index()));
                values(out, &e.values, &unscaled);
                long(out, i64::from(e.attempts));
                opt_string(out, e.error_code.as_deref());
                opt_string(out, e.error_message.as_deref());
                timestamp(out, e.scored_at);
                long(out, i64::from(e.source_partition));
                long(out, e.source_offset);
                long(out, i64::from(e.requests));
                opt_string(out, e.etag.as_deref());
                long(out, i64::from(e.rate_limited_requests));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Reads a datum of `record` written with its current schema; `None` when `record` is not
    /// one written here or the datum is not one this reader accepts (the caller then asks the
    /// generic reader, which says what is wrong). Bytes after the datum are ignored, as the
    /// generic reader ignores them.
    pub(super) fn read(record: &str, datum: &[u8]) -> Option<Event> {
        let mut r = Reader { bytes: datum };
        Some(match record {
            "AccountEntry" => Event::AccountEntry(AccountEntry {
                account_id: r.string()?,
                account_name: r.string()?,
                version: r.long()?,
                updated_at: r.timestamp()?,
                run_id: r.string()?,
            }),
            "AccountChanged" => Event::AccountChanged(AccountChanged {
                run_id: r.string()?,
                account_id: r.string()?,
                version: r.long()?,
                reason: r.symbol(ChangeReason::ALL)?,
                emitted_at: r.timestamp()?,
                prior: match r.branch()? {
                    false => None,
                    true => Some(PriorAnalysis {
                        etag: r.string()?,
                        values: r.values()?,
                    }),
                },
            }),
            "EsgScore" => Event::EsgScore(EsgScore {
                run_id: r.string()?,
                account_id: r.string()?,
                account_version: r.long()?,
                status: r.symbol(ScoreStatus::ALL)?,
                values: r.values()?,
                attempts: r.int()?,
                error_code: r.opt_string()?,
                error_message: r.opt_string()?,
                scored_at: r.timestamp()?,
                source_partition: r.int()?,
                source_offset: r.long()?,
                requests: r.int()?,
                etag: r.opt_string()?,
                rate_limited_requests: r.int()?,
            }),
            _ => return None,
        })
    }

    /// Union branch 0 (`null`) and 1 (the value) of a `["null", T]` field, zig-zag encoded.
    const NULL: u8 = 0;
    const SOME: u8 = 2;

    /// Avro `long` (and `int`, whose encoding is the same for every `i32`): zig-zag varint.
    fn long(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8 & 0x7F) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        long(out, b.len() as i64);
        out.extend_from_slice(b);
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        bytes(out, s.as_bytes());
    }

    fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => out.push(NULL),
            Some(s) => {
                out.push(SOME);
                string(out, s);
            }
        }
    }

    fn timestamp(out: &mut Vec<u8>, t: DateTime<Utc>) {
        long(out, t.timestamp_millis());
    }

    /// The unscaled values of the five decimals of `v` (overall, environmental, social,
    /// governance, primary focus score), each checked in the generic path's order.
    fn checked(record: &'static str, v: &EsgValues) -> Result<[Option<i32>; 5], super::CodecError> {
        let u = |field, d: Option<Decimal>| d.map(|d| unscaled(record, field, d)).transpose();
        Ok([
            u("overall", v.overall)?,
            u("environmental", v.environmental)?,
            u("social", v.social)?,
            u("governance", v.governance)?,
            u("primary_focus_score", v.primary_focus_score)?,
        ])
    }

    /// The seven value fields, `overall` to `analysis_date`, with the decimals of [`checked`].
    fn values(out: &mut Vec<u8>, v: &EsgValues, unscaled: &[Option<i32>; 5]) {
        let decimal = |out: &mut Vec<u8>, d: Option<i32>| match d {
            None => out.push(NULL),
            Some(u) => {
                out.push(SOME);
                // Always 4 bytes, as the generic path writes them (see `super::unscaled`).
                bytes(out, &u.to_be_bytes());
            }
        };
        let [overall, environmental, social, governance, focus_score] = *unscaled;
        decimal(out, overall);
        decimal(out, environmental);
        decimal(out, social);
        decimal(out, governance);
        match v.primary_focus {
            None => out.push(NULL),
            Some(p) => {
                out.push(SOME);
                long(out, i64::from(p.index()));
            }
        }
        decimal(out, focus_score);
        match v.analysis_date {
            None => out.push(NULL),
            Some(d) => {
                out.push(SOME);
                long(out, i64::from(super::days_since_epoch(d)));
            }
        }
    }

    struct Reader<'a> {
        bytes: &'a [u8],
    }

    impl<'a> Reader<'a> {
        fn long(&mut self) -> Option<i64> {
            let mut z: u64 = 0;
            for (i, b) in self.bytes.iter().enumerate().take(10) {
                // The tenth byte holds the 64th bit only; more is an overflow.
                if i == 9 && *b > 1 {
                    return None;
                }
                z |= u64::from(b & 0x7F) << (7 * i);
                if b & 0x80 == 0 {
                    self.bytes = &self.bytes[i + 1..];
                    return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
                }
            }
            None
        }

        fn int(&mut self) -> Option<i32> {
            i32::try_from(self.long()?).ok()
        }

        fn bytes(&mut self) -> Option<&'a [u8]> {
            let len = usize::try_from(self.long()?).ok()?;
            if len > self.bytes.len() {
                return None;
            }
            let (b, rest) = self.bytes.split_at(len);
            self.bytes = rest;
            Some(b)
        }

        fn string(&mut self) -> Option<String> {
            std::str::from_utf8(self.bytes()?).ok().map(str::to_owned)
        }

        /// The branch of a `["null", T]` union: false for null.
        fn branch(&mut self) -> Option<bool> {
            match self.long()? {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            }
        }

        fn opt_string(&mut self) -> Option<Option<String>> {
            match self.branch()? {
                false => Some(None),
                true => self.string().map(Some),
            }
        }

        fn symbol<T: Copy>(&mut self, all: &[T]) -> Option<T> {
            all.get(usize::try_from(self.long()?).ok()?).copied()
        }

        fn timestamp(&mut self) -> Option<DateTime<Utc>> {
            DateTime::from_timestamp_millis(self.long()?)
        }

        fn date(&mut self) -> Option<NaiveDate> {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
            epoch.checked_add_signed(chrono::Duration::days(self.int()?.into()))
        }

        /// A decimal of scale 4 in 1 to 16 big-endian two's complement bytes (what the generic
        /// reader accepts).
        fn decimal(&mut self) -> Option<Decimal> {
            let b = self.bytes()?;
            if b.is_empty() || b.len() > 16 {
                return None;
            }
            let fill = if b[0] & 0x80 != 0 { 0xFF } else { 0x00 };
            let mut full = [fill; 16];
            full[16 - b.len()..].copy_from_slice(b);
            Decimal::try_from_i128_with_scale(i128::from_be_bytes(full), DECIMAL_SCALE).ok()
        }

        fn opt<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
            match self.branch()? {
                false => Some(None),
                true => read(self).map(Some),
            }
        }

        fn values(&mut self) -> Option<EsgValues> {
            Some(EsgValues {
                overall: self.opt(Self::decimal)?,
                environmental: self.opt(Self::decimal)?,
                social: self.opt(Self::decimal)?,
                governance: self.opt(Self::decimal)?,
                primary_focus: self.opt(|r| r.symbol(Pillar::ALL))?,
                primary_focus_score: self.opt(Self::decimal)?,
                analysis_date: self.opt(Self::date)?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }

    fn score() -> EsgScore {
        EsgScore {
            run_id: "2026-11-23".into(),
            account_id: "ACC-1".into(),
            account_version: 7,
            status: ScoreStatus::Partial,
            values: EsgValues {
                overall: Some(Decimal::from_str("72.3456").unwrap_or_default()),
                environmental: Some(Decimal::from_str("0").unwrap_or_default()),
                social: None,
                governance: Some(Decimal::from_str("100").unwrap_or_default()),
                primary_focus: Some(Pillar::Governance),
                primary_focus_score: Some(Decimal::from_str("99.995").unwrap_or_default()),
                analysis_date: NaiveDate::from_ymd_opt(2026, 11, 20),
            },
            attempts: 2,
            error_code: None,
            error_message: None,
            scored_at: t(1_763_900_000_123),
            source_partition: 3,
            source_offset: 42,
            requests: 4,
            etag: Some("\"v7-2026-11-20\"".into()),
            rate_limited_requests: 1,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Guards the bytes on the bus: grouping a score's ESG fields into `EsgValues` changed the
    /// Rust type, not the record, and adding `etag` only appended its null (`00`) to the datum,
    /// `rate_limited_requests` (v4) its int (`02` for 1, `00` for 0). The literals are the
    /// datums the flat struct encoded to before `etag` existed, with those bytes appended; the
    /// 10 bytes before the datum are the marker and the schema fingerprint (released v4's).
    #[test]
    fn esg_score_bytes_are_unchanged_by_the_values_type() {
        let codec = Codec::new().expect("schemas parse");
        let v4 = Schema::parse_str(released("v4", "EsgScore")).expect("v4 parses");
        let datum = |score: EsgScore| {
            let bytes = codec.encode(&Event::EsgScore(score)).expect("encode");
            assert_eq!(&bytes[..2], &[0xC3, 0x01]);
            assert_eq!(bytes[2..10], fingerprint(&v4), "written with released v4");
            hex(&bytes[10..])
        };
        let partial = EsgScore {
            error_code: Some("PARTIAL".into()),
            error_message: Some("m".into()),
            etag: None,
            ..score()
        };
        assert_eq!(
            datum(partial),
            "14323032362d31312d32330a4143432d310e020208000b0a00020800000000\
             000208000f424002040208000f420e02d2c40204020e5041525449414c02026df69d908ad666065408\
             00\
             02" // rate_limited_requests: 1
        );
        let failed = EsgScore::failed(
            "2026-11-23",
            "B",
            1,
            3,
            "HTTP_503",
            "service unavailable".into(),
            t(3),
        );
        assert_eq!(
            datum(failed),
            "14323032362d31312d32330242020400000000000000060210485454505f\
             35303302267365727669636520756e617661696c61626c650601010000\
             00" // rate_limited_requests: 0
        );
    }

    #[test]
    fn failed_values_are_empty_and_partial() {
        let none = EsgValues::failed();
        assert_eq!(none, EsgValues::default());
        assert!(none.is_partial());
        let full = score().values;
        let full = EsgValues {
            social: Some(Decimal::ONE),
            ..full
        };
        assert!(!full.is_partial());
        assert_eq!(full.scored_status(), ScoreStatus::Successful);
        // Each value missing on its own makes the score Partial: the primary focus is its
        // pillar and its score.
        let missing: [fn(&mut EsgValues); 7] = [
            |v| v.overall = None,
            |v| v.environmental = None,
            |v| v.social = None,
            |v| v.governance = None,
            |v| v.primary_focus = None,
            |v| v.primary_focus_score = None,
            |v| v.analysis_date = None,
        ];
        for (i, clear) in missing.iter().enumerate() {
            let mut v = full;
            clear(&mut v);
            assert!(v.is_partial(), "value {i}");
            assert_eq!(v.scored_status(), ScoreStatus::Partial, "value {i}");
        }
        let failed = EsgScore::failed("r", "A", 1, 3, "HTTP_503", String::new(), t(0));
        assert_eq!(failed.values, EsgValues::failed());
        assert_eq!(failed.status, ScoreStatus::Failed);
    }

    #[test]
    fn every_event_round_trips() {
        let codec = Codec::new().expect("schemas parse");
        let d = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default();
        let events = vec![
            Event::DailyTrigger(DailyTrigger {
                run_id: "2026-11-23".into(),
                business_date: d,
                kind: RunKind::Rerun,
                full: true,
                deadline: t(1_763_910_000_000),
                triggered_at: t(1_763_895_600_000),
            }),
            Event::RunSealed(RunSealed {
                run_id: "2026-11-23".into(),
                business_date: d,
                expected_accounts: 10,
                active_accounts: 12,
                gone_accounts: 1,
                sealed_at: t(5),
                ..Default::default()
            }),
            Event::RunCompleted(RunCompleted {
                run_id: "2026-11-23.1".into(),
                business_date: d,
                outcome: RunOutcome::CompletedWithFailures,
                rows: 3,
                successful: 1,
                partial: 1,
                failed: 1,
                output_file: "FirmESGRatings_20261123.csv".into(),
                completed_at: t(9),
            }),
            Event::AccountChanged(AccountChanged {
                run_id: "2026-11-23".into(),
                account_id: "A.1".into(),
                version: 3,
                reason: ChangeReason::Stale,
                emitted_at: t(1),
                prior: None,
            }),
            Event::AccountChanged(AccountChanged {
                run_id: "2026-11-24".into(),
                account_id: "A.2".into(),
                version: 3,
                reason: ChangeReason::Forced,
                emitted_at: t(1),
                prior: Some(PriorAnalysis {
                    etag: "W/\"abc\"".into(),
                    values: score().values,
                }),
            }),
            Event::AccountEntry(AccountEntry {
                account_id: "A.1".into(),
                account_name: "Ünïcødé Fund".into(),
                version: 3,
                updated_at: t(2),
                run_id: "2026-11-23".into(),
            }),
            Event::EsgScore(score()),
            Event::EsgScore(EsgScore::failed(
                "2026-11-23",
                "B",
                1,
                3,
                "HTTP_503",
                "service unavailable".into(),
                t(3),
            )),
        ];
        for e in events {
            let bytes = codec.encode(&e).expect("encode");
            assert_eq!(&bytes[..2], &[0xC3, 0x01]);
            let back = codec.decode(&bytes).expect("decode");
            assert_eq!(back, e, "{}", e.record_name());
        }
    }

    #[test]
    fn decimals_keep_exact_value_at_scale_four() {
        let codec = Codec::new().expect("schemas parse");
        for text in [
            "0",
            "0.0001",
            "49.9950",
            "100",
            "-0.5",
            "12345.6789",
            "-99999.9999",
        ] {
            let mut s = score();
            s.values.overall = Some(Decimal::from_str(text).expect("decimal"));
            let back = codec
                .decode(&codec.encode(&Event::EsgScore(s.clone())).expect("encode"))
                .expect("decode");
            let Event::EsgScore(back) = back else {
                panic!("wrong record")
            };
            assert_eq!(back.values.overall, s.values.overall, "{text}");
            assert_eq!(back.values.overall.map(|d| d.scale()), Some(4));
        }
    }

    #[test]
    fn more_than_nine_digits_is_refused() {
        let codec = Codec::new().expect("schemas parse");
        let mut s = score();
        s.values.overall = Some(Decimal::from_str("100000").expect("decimal"));
        let err = codec.encode(&Event::EsgScore(s)).expect_err("must refuse");
        assert!(err.to_string().contains("9 digits"), "{err}");
    }

    #[test]
    fn more_than_four_decimals_is_refused() {
        let codec = Codec::new().expect("schemas parse");
        let mut s = score();
        s.values.overall = Some(Decimal::from_str("1.23456").expect("decimal"));
        let err = codec.encode(&Event::EsgScore(s)).expect_err("must refuse");
        assert!(err.to_string().contains("EsgScore.overall"), "{err}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let codec = Codec::new().expect("schemas parse");
        assert!(matches!(
            codec.decode(b"hello world"),
            Err(CodecError::NotSingleObject)
        ));
        let bytes = [0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0];
        assert!(matches!(
            codec.decode(&bytes),
            Err(CodecError::UnknownSchema(_))
        ));
        let mut good = codec.encode(&Event::EsgScore(score())).expect("encode");
        good.truncate(14);
        assert!(matches!(codec.decode(&good), Err(CodecError::Avro { .. })));
    }

    #[test]
    fn records_written_with_an_older_schema_are_read_with_defaults() {
        // An older EsgScore without the two source fields (added later, with defaults).
        let mut json: serde_json::Value =
            serde_json::from_str(include_str!("../avro/EsgScore.avsc")).expect("json");
        let fields = json["fields"].as_array_mut().expect("fields");
        fields.retain(|f| f["name"] != "source_partition" && f["name"] != "source_offset");
        let old_text = json.to_string();
        let old = Schema::parse_str(&old_text).expect("old schema");

        let mut codec = Codec::new().expect("codec");
        let written = score();
        let Value::Record(mut values) = to_value(&Event::EsgScore(written.clone())).expect("value")
        else {
            panic!("record")
        };
        values.retain(|(k, _)| k != "source_partition" && k != "source_offset");
        let datum = GenericDatumWriter::builder(&old)
            .build()
            .and_then(|w| w.write_value_to_vec(Value::Record(values)))
            .expect("old datum");
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&fingerprint(&old));
        bytes.extend_from_slice(&datum);

        assert!(matches!(
            codec.decode(&bytes),
            Err(CodecError::UnknownSchema(_))
        ));
        codec
            .add_writer_schema("EsgScore", &old_text)
            .expect("older version accepted");
        let Event::EsgScore(read) = codec.decode(&bytes).expect("decodes") else {
            panic!("wrong record")
        };
        assert_eq!(read.source_partition, -1);
        assert_eq!(read.source_offset, -1);
        assert_eq!(read.values.overall, written.values.overall);
        assert_eq!(read.account_id, written.account_id);
    }

    #[test]
    fn a_score_written_with_released_v1_reads_with_zero_requests() {
        // v1 has no `requests` field: records written by older scorers count no request.
        let v1 = RELEASED
            .iter()
            .find(|(version, s)| *version == "v1" && s.name == "EsgScore")
            .map(|(_, s)| Schema::parse_str(s.text).expect("v1 parses"))
            .expect("v1 EsgScore released");
        let written = score();
        let Value::Record(mut values) = to_value(&Event::EsgScore(written.clone())).expect("value")
        else {
            panic!("record")
        };
        values.retain(|(k, _)| k != "requests" && k != "etag" && k != "rate_limited_requests");
        let datum = GenericDatumWriter::builder(&v1)
            .build()
            .and_then(|w| w.write_value_to_vec(Value::Record(values)))
            .expect("v1 datum");
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&fingerprint(&v1));
        bytes.extend_from_slice(&datum);
        let codec = Codec::new().expect("codec");
        let Event::EsgScore(read) = codec.decode(&bytes).expect("decodes") else {
            panic!("wrong record")
        };
        assert_eq!(read.requests, 0);
        assert_eq!(read.etag, None);
        assert_eq!(read.rate_limited_requests, 0);
        assert_eq!(read.attempts, written.attempts);
        assert_eq!(
            EsgScore {
                requests: written.requests,
                etag: written.etag.clone(),
                rate_limited_requests: written.rate_limited_requests,
                ..read
            },
            written
        );
    }

    /// Scores scorers wrote before v4 carry no `rate_limited_requests`: they read with 0, every
    /// other field as written, from the embedded log (single-object encoding) and from a
    /// registry (a bare datum and its writer schema).
    #[test]
    fn a_score_written_with_released_v3_reads_with_zero_rate_limited_requests() {
        let text = released("v3", "EsgScore");
        let v3 = Schema::parse_str(text).expect("v3 parses");
        let written = score();
        let Value::Record(mut values) = to_value(&Event::EsgScore(written.clone())).expect("value")
        else {
            panic!("record")
        };
        values.retain(|(k, _)| k != "rate_limited_requests");
        let datum = GenericDatumWriter::builder(&v3)
            .build()
            .and_then(|w| w.write_value_to_vec(Value::Record(values)))
            .expect("v3 datum");
        let expected = Event::EsgScore(EsgScore {
            rate_limited_requests: 0,
            ..written
        });
        let codec = Codec::new().expect("codec");

        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&fingerprint(&v3));
        bytes.extend_from_slice(&datum);
        assert_eq!(codec.decode(&bytes).expect("decodes"), expected);

        let (record, parsed) = codec.parse_writer(text).expect("a readable writer");
        assert!(!codec.is_current(record, &parsed));
        let read = codec
            .decode_datum_with(record, &parsed, &datum)
            .expect("decodes");
        assert_eq!(read, expected);
    }

    /// The text of a released schema.
    fn released(version: &str, record: &str) -> &'static str {
        RELEASED
            .iter()
            .find(|(v, s)| *v == version && s.name == record)
            .map(|(_, s)| s.text)
            .unwrap_or_else(|| panic!("{version} {record} released"))
    }

    /// Guards the v3 layout of `AccountChanged` on the bus: run id, account id, version, reason,
    /// emitted at, prior. No name between the account id and the version, where v1 and v2 had
    /// one; the fingerprint is released v3's.
    #[test]
    fn account_changed_bytes_carry_no_name() {
        let codec = Codec::new().expect("schemas parse");
        let v3 = Schema::parse_str(released("v3", "AccountChanged")).expect("v3 parses");
        let datum = |prior| {
            let bytes = codec
                .encode(&Event::AccountChanged(AccountChanged {
                    run_id: "2026-11-23".into(),
                    account_id: "A.1".into(),
                    version: 3,
                    reason: ChangeReason::Stale,
                    emitted_at: t(1),
                    prior,
                }))
                .expect("encode");
            assert_eq!(&bytes[..2], &[0xC3, 0x01]);
            assert_eq!(bytes[2..10], fingerprint(&v3), "written with released v3");
            hex(&bytes[10..])
        };
        let head = concat!(
            "14323032362d31312d3233", // run_id: length 10, "2026-11-23"
            "06412e31",               // account_id: length 3, "A.1"
            "06",                     // version: 3
            "04",                     // reason: symbol 2, Stale
            "02",                     // emitted_at: 1 ms
        );
        assert_eq!(datum(None), format!("{head}00")); // prior: null
        let prior = PriorAnalysis {
            etag: "e".into(),
            values: EsgValues {
                overall: Some(Decimal::ONE),
                primary_focus: Some(Pillar::Governance),
                analysis_date: NaiveDate::from_ymd_opt(1970, 1, 2),
                ..EsgValues::failed()
            },
        };
        let prior_bytes = concat!(
            "02",           // prior: branch 1
            "0265",         // etag: length 1, "e"
            "020800002710", // overall: 1.0000, 4 bytes unscaled 10000
            "000000",       // environmental, social, governance: null
            "0204",         // primary_focus: symbol 2, Governance
            "00",           // primary_focus_score: null
            "0202",         // analysis_date: day 1
        );
        assert_eq!(datum(Some(prior)), format!("{head}{prior_bytes}"));
    }

    /// Removing `account_name` (v3) is BACKWARD compatible in fact, not only by the schema
    /// check: events v1 and v2 producers wrote, which hold a name, read into the current type,
    /// from the embedded log (single-object encoding) and from a registry (a bare datum and its
    /// writer schema).
    #[test]
    fn account_changed_written_with_v1_or_v2_reads_without_the_name() {
        let codec = Codec::new().expect("codec");
        let name = "=cmd|' /C calc'!A0, \"Fund\"";
        let written = AccountChanged {
            run_id: "2026-11-23".into(),
            account_id: "A.1".into(),
            version: 3,
            reason: ChangeReason::Changed,
            emitted_at: t(1_763_900_000_123),
            prior: Some(PriorAnalysis {
                etag: "W/\"abc\"".into(),
                values: score().values,
            }),
        };
        for version in ["v1", "v2"] {
            let text = released(version, "AccountChanged");
            let writer = Schema::parse_str(text).expect("released schema parses");
            let Value::Record(mut fields) =
                to_value(&Event::AccountChanged(written.clone())).expect("value")
            else {
                panic!("record")
            };
            // The writer's layout: the name after the account id; v1 has no prior yet.
            fields.insert(2, ("account_name".into(), s(name)));
            if version == "v1" {
                fields.retain(|(k, _)| k != "prior");
            }
            let datum = GenericDatumWriter::builder(&writer)
                .build()
                .and_then(|w| w.write_value_to_vec(Value::Record(fields)))
                .expect("old datum");
            assert!(
                datum.windows(name.len()).any(|w| w == name.as_bytes()),
                "the {version} datum holds the name"
            );
            let expected = Event::AccountChanged(AccountChanged {
                prior: written.prior.clone().filter(|_| version != "v1"),
                ..written.clone()
            });

            let mut bytes = vec![0xC3, 0x01];
            bytes.extend_from_slice(&fingerprint(&writer));
            bytes.extend_from_slice(&datum);
            assert_eq!(
                codec.decode(&bytes).expect("decodes"),
                expected,
                "{version}"
            );

            let (record, parsed) = codec.parse_writer(text).expect("a readable writer");
            assert!(!codec.is_current(record, &parsed), "{version}");
            let read = codec
                .decode_datum_with(record, &parsed, &datum)
                .expect("decodes");
            assert_eq!(read, expected, "{version}");
        }
    }

    /// Events of the directly written records covering every field's cases: each union null
    /// and not, every enum symbol, decimals at the limits of precision 9, text that is not
    /// ASCII, extreme numbers and instants.
    fn direct_cases() -> Vec<Event> {
        let d = |text: &str| Some(Decimal::from_str(text).unwrap_or_default());
        let full = EsgValues {
            overall: d("99999.9999"),
            environmental: d("-99999.9999"),
            social: d("0"),
            governance: d("0.0001"),
            primary_focus: Some(Pillar::Environmental),
            primary_focus_score: d("-0.5"),
            analysis_date: NaiveDate::from_ymd_opt(1969, 12, 31),
        };
        let mut values = vec![EsgValues::failed(), full, score().values];
        let clear: [fn(&mut EsgValues); 7] = [
            |v| v.overall = None,
            |v| v.environmental = None,
            |v| v.social = None,
            |v| v.governance = None,
            |v| v.primary_focus = None,
            |v| v.primary_focus_score = None,
            |v| v.analysis_date = None,
        ];
        for c in clear {
            let mut v = full;
            c(&mut v);
            values.push(v);
        }
        for p in Pillar::ALL {
            values.push(EsgValues {
                primary_focus: Some(*p),
                ..full
            });
        }
        let mut events = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let status = ScoreStatus::ALL[i % ScoreStatus::ALL.len()];
            events.push(Event::EsgScore(EsgScore {
                status,
                values: *v,
                error_code: (i % 2 == 0).then(|| "HTTP_503".into()),
                error_message: (i % 3 == 0).then(|| "ünïcødé \u{1F600} message".into()),
                etag: (i % 2 == 1).then(|| format!("W/\"{i}\"")),
                attempts: [0, 1, i32::MAX, -1][i % 4],
                requests: [0, 7, i32::MIN][i % 3],
                rate_limited_requests: [0, 3, i32::MAX, i32::MIN][i % 4],
                source_partition: -1,
                source_offset: [i64::MIN, -1, 0, i64::MAX][i % 4],
                account_version: [i64::MAX, 0, -3][i % 3],
                ..score()
            }));
            let reason = ChangeReason::ALL[i % ChangeReason::ALL.len()];
            events.push(Event::AccountChanged(AccountChanged {
                run_id: "2026-11-23.2".into(),
                account_id: format!("A.{i}"),
                version: i as i64 - 5,
                reason,
                emitted_at: t(-1),
                prior: (i % 2 == 1).then(|| PriorAnalysis {
                    etag: String::new(),
                    values: *v,
                }),
            }));
        }
        for reason in ChangeReason::ALL {
            events.push(Event::AccountChanged(AccountChanged {
                run_id: "r".into(),
                account_id: "B".into(),
                version: 0,
                reason: *reason,
                emitted_at: t(0),
                prior: None,
            }));
        }
        for status in ScoreStatus::ALL {
            events.push(Event::EsgScore(EsgScore {
                status: *status,
                ..score()
            }));
        }
        for (i, at) in [t(0), t(-62_135_596_800_000), t(253_402_300_799_999)]
            .into_iter()
            .enumerate()
        {
            events.push(Event::AccountEntry(AccountEntry {
                account_id: format!("ACC-{i}"),
                account_name: ["", "Ünïcødé Fund", &"x".repeat(300)][i].into(),
                version: [0, -1, i64::MAX][i],
                updated_at: at,
                run_id: "2026-11-23".into(),
            }));
        }
        events
    }

    #[test]
    fn direct_bytes_are_the_generic_writers_and_read_back_as_the_generic_reader_does() {
        let codec = Codec::new().expect("schemas parse");
        for e in direct_cases() {
            let mut direct_bytes = Vec::new();
            assert!(direct::write(&e, &mut direct_bytes).expect("writes"));
            let generic = codec.generic_datum(&e).expect("generic writes");
            assert_eq!(hex(&direct_bytes), hex(&generic), "{e:?}");
            let entry = codec.entry(e.record_name());
            let read = direct::read(entry.name, &direct_bytes).expect("direct reads");
            let generic_read = codec
                .generic_decode_datum(entry, &direct_bytes)
                .expect("generic reads");
            assert_eq!(read, generic_read, "{e:?}");
            assert_eq!(read, e);
            // And through the public single-object path.
            let bytes = codec.encode(&e).expect("encode");
            assert_eq!(&bytes[10..], &generic[..]);
            assert_eq!(codec.decode(&bytes).expect("decode"), e);
        }
    }

    #[test]
    fn direct_field_lists_are_the_schemas() {
        let names = |schema: &Schema| match schema {
            Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            other => panic!("not a record: {other:?}"),
        };
        let codec = Codec::new().expect("schemas parse");
        for (record, fields) in direct::FIELDS {
            let schema = if *record == "PriorAnalysis" {
                let Some(Schema::Record(changed)) = codec.schema("AccountChanged") else {
                    panic!("AccountChanged is a record")
                };
                let prior = changed
                    .fields
                    .iter()
                    .find(|f| f.name == "prior")
                    .expect("prior field");
                let Schema::Union(u) = &prior.schema else {
                    panic!("prior is a union")
                };
                u.variants()[1].clone()
            } else {
                codec.schema(record).expect("schema").clone()
            };
            assert_eq!(&names(&schema), fields, "{record}");
        }
    }

    #[test]
    fn datums_the_direct_reader_refuses_get_the_generic_readers_answer() {
        let codec = Codec::new().expect("schemas parse");
        for e in direct_cases().into_iter().take(12) {
            let entry = codec.entry(e.record_name());
            let good = codec.encode_datum(&e).expect("encode");
            let mut bad: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
            // A union or enum index out of range, bytes that are not UTF-8, an overlong varint.
            for (at, byte) in [(0, 0x7F), (0, 0x04), (1, 0xFF), (good.len() - 1, 0x06)] {
                let mut b = good.clone();
                b[at] = byte;
                bad.push(b);
            }
            let mut not_utf8 = good.clone();
            not_utf8[1] = 0xC3;
            not_utf8[2] = 0x28;
            bad.push(not_utf8);
            bad.push(vec![0xFF; 12]);
            for datum in bad {
                let got = codec.decode_datum(entry.name, &datum);
                let generic = codec.generic_decode_datum(entry, &datum);
                match (got, generic) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", hex(&datum)),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => panic!("{}: direct {a:?}, generic {b:?}", hex(&datum)),
                }
            }
        }
    }

    #[test]
    fn directly_written_records_refuse_bad_decimals_as_the_generic_path_does() {
        let codec = Codec::new().expect("schemas parse");
        let big = Some(Decimal::from_str("100000").unwrap_or_default());
        let fine = Some(Decimal::from_str("1.23456").unwrap_or_default());
        let mut cases = Vec::new();
        for bad in [big, fine] {
            let mut s = score();
            s.values.social = bad;
            s.values.primary_focus_score = big;
            cases.push(Event::EsgScore(s));
            let mut s = score();
            s.values.primary_focus_score = bad;
            cases.push(Event::EsgScore(s));
            cases.push(Event::AccountChanged(AccountChanged {
                run_id: "r".into(),
                account_id: "A".into(),
                version: 1,
                reason: ChangeReason::New,
                emitted_at: t(0),
                prior: Some(PriorAnalysis {
                    etag: "e".into(),
                    values: EsgValues {
                        overall: bad,
                        ..score().values
                    },
                }),
            }));
        }
        for e in cases {
            let mut out = vec![1, 2, 3];
            let direct_err = direct::write(&e, &mut out).expect_err("refused");
            assert_eq!(out, [1, 2, 3], "nothing written");
            let generic_err = codec.generic_datum(&e).expect_err("refused");
            assert_eq!(direct_err.to_string(), generic_err.to_string());
        }
    }

    #[test]
    fn every_schema_field_has_documentation() {
        for source in SCHEMAS {
            let schema = Schema::parse_str(source.text).expect("parses");
            let Schema::Record(record) = schema else {
                panic!("{} is not a record", source.name)
            };
            assert_eq!(record.name.name(), source.name);
            assert!(record.doc.is_some(), "{} has no doc", source.name);
            for field in &record.fields {
                let documented = field.doc.as_deref().is_some_and(|d| !d.is_empty());
                assert!(documented, "{}.{} has no doc", source.name, field.name);
            }
        }
    }
}
