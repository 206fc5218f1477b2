//! Every key the configuration knows, read from the serde declarations themselves, so that a
//! test can check that `esg.example.toml` documents each one: a key added to a config struct
//! without its line in the example fails the test.
//!
//! How: a deserializer that answers one question per pass. Asked for a struct at the end of the
//! path it is exploring, it records the struct's field names and stops; before that it hands the
//! struct a table with only the next key of the path. Anything that is not a struct (a number,
//! text, a list, a map of free names such as `kafka.properties`) is a leaf.

use serde::de::{self, DeserializeOwned, IntoDeserializer, MapAccess, Visitor};
use std::cell::Cell;

type Error = de::value::Error;

#[derive(Clone, Copy)]
enum Shape {
    Leaf,
    Table(&'static [&'static str]),
}

/// Every leaf key of `T`, dotted (`esg_api.timeout`, `alerts.email.recipients.business`), in
/// declaration order. Optional tables (`alerts.email`) are explored as if present.
pub(super) fn leaf_keys<T: DeserializeOwned>() -> Vec<String> {
    let mut out = Vec::new();
    walk::<T>(&mut Vec::new(), &mut out);
    out
}

fn walk<T: DeserializeOwned>(path: &mut Vec<&'static str>, out: &mut Vec<String>) {
    let found = Cell::new(None);
    // The pass ends in an error by design (the probe never yields a whole value).
    let _ = T::deserialize(Probe {
        rest: path,
        found: &found,
    });
    match found.get() {
        Some(Shape::Table(fields)) => {
            for field in fields {
                path.push(field);
                walk::<T>(path, out);
                path.pop();
            }
        }
        Some(Shape::Leaf) | None => out.push(path.join(".")),
    }
}

struct Probe<'a> {
    rest: &'a [&'static str],
    found: &'a Cell<Option<Shape>>,
}

fn stop() -> Error {
    de::Error::custom("probe")
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        if self.rest.is_empty() {
            self.found.set(Some(Shape::Leaf));
        }
        Err(stop())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.rest.split_first() {
            None => {
                self.found.set(Some(Shape::Table(fields)));
                Err(stop())
            }
            Some((key, rest)) => visitor.visit_map(OneKey {
                key: Some(key),
                value: Some(Probe {
                    rest,
                    found: self.found,
                }),
            }),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// A table holding one key, whose value is the probe of the rest of the path.
struct OneKey<'a> {
    key: Option<&'static str>,
    value: Option<Probe<'a>>,
}

impl<'de> MapAccess<'de> for OneKey<'_> {
    type Error = Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.key.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(probe) => seed.deserialize(probe),
            None => Err(stop()),
        }
    }
}
