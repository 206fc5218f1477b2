//! The events of the ESG ratings pipeline and their Avro encoding.
//!
//! Every record that crosses the bus is defined once, as an `.avsc` file in `schemas/avro/`
//! (documented field by field), and once as a Rust type in [`events`]. [`Codec`] converts
//! between the two. Decimals travel as the Avro `decimal` logical type with scale 4, never as
//! floating point; dates as the `date` logical type; instants as `timestamp-millis`.
//!
//! The embedded transport stores each value in Avro *single-object encoding*
//! (`C3 01`, the 8-byte Rabin fingerprint of the writer schema, then the datum), so a stored
//! message names its own schema and a topic may carry several record types (`esg.triggers`
//! carries `DailyTrigger`, `RunSealed` and `RunCompleted`). The Kafka transport carries the
//! same datum behind the Confluent wire-format header instead.

mod codec;
pub mod events;

pub use codec::{Codec, CodecError, SchemaSource, RELEASED, SCHEMAS};
pub use events::*;
