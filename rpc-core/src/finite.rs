//! Finds a non-finite float (NaN, ±infinity) anywhere in a `Serialize` value, with its path.
//!
//! `serde_json` silently turns such floats into `null`, so a result of `f64::NAN` would reach
//! the caller as a successful `null`: a wrong answer. Every value a handler returns or a client
//! sends passes through [`find_non_finite`] first (see `handler::encode`).

use std::fmt;

use serde::ser::{self, Impossible, Serialize};

/// Where the first non-finite float is (`.probability`, `[2]`, `["key"]`), and its text
/// (`NaN`, `inf`, `-inf`), or `None` when every float is finite.
pub(crate) fn find_non_finite<T: Serialize + ?Sized>(value: &T) -> Option<(String, String)> {
    let mut checker = Checker { path: Vec::new() };
    match value.serialize(&mut checker) {
        Ok(()) => None,
        Err(Found::NonFinite(path, text)) => Some((path, text)),
        // A value that fails to serialize is reported by the serializer that really encodes it.
        Err(Found::Other) => None,
    }
}

#[derive(Debug)]
enum Found {
    NonFinite(String, String),
    Other,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("non-finite number")
    }
}

impl std::error::Error for Found {}

impl ser::Error for Found {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Found::Other
    }
}

struct Checker {
    path: Vec<String>,
}

impl Checker {
    fn float(&self, f: f64) -> Result<(), Found> {
        if f.is_finite() {
            Ok(())
        } else {
            Err(Found::NonFinite(self.path.concat(), format!("{f}")))
        }
    }

    fn nested<T: Serialize + ?Sized>(&mut self, segment: String, value: &T) -> Result<(), Found> {
        self.path.push(segment);
        let out = value.serialize(&mut *self);
        self.path.pop();
        out
    }
}

macro_rules! ignore {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method(self, _: $ty) -> Result<(), Found> {
            Ok(())
        }
    )*};
}

impl<'a> ser::Serializer for &'a mut Checker {
    type Ok = ();
    type Error = Found;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Seq<'a>;
    type SerializeStructVariant = Seq<'a>;

    ignore! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32); serialize_i64(i64);
        serialize_i128(i128); serialize_u8(u8); serialize_u16(u16); serialize_u32(u32); serialize_u64(u64);
        serialize_u128(u128); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_unit_struct(&'static str);
    }

    fn serialize_f32(self, v: f32) -> Result<(), Found> {
        self.float(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Found> {
        self.float(v)
    }

    fn serialize_none(self) -> Result<(), Found> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Found> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Found> {
        Ok(())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Found> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Found> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        self.nested(format!(".{variant}"), value)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, Found> {
        Ok(Seq { checker: self, index: 0 })
    }

    fn serialize_tuple(self, _: usize) -> Result<Seq<'a>, Found> {
        Ok(Seq { checker: self, index: 0 })
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Seq<'a>, Found> {
        Ok(Seq { checker: self, index: 0 })
    }

    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Seq<'a>, Found> {
        Ok(Seq { checker: self, index: 0 })
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Map<'a>, Found> {
        Ok(Map { checker: self, key: String::new() })
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Seq<'a>, Found> {
        Ok(Seq { checker: self, index: 0 })
    }

    fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Seq<'a>, Found> {
        Ok(Seq { checker: self, index: 0 })
    }
}

/// Sequences, tuples and structs: elements by index, fields by name.
struct Seq<'a> {
    checker: &'a mut Checker,
    index: usize,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
        let segment = format!("[{}]", self.index);
        self.index += 1;
        self.checker.nested(segment, value)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Found> {
        self.checker.nested(format!(".{key}"), value)
    }
}

macro_rules! seq_like {
    ($($trait:ident :: $method:ident;)*) => {$(
        impl ser::$trait for Seq<'_> {
            type Ok = ();
            type Error = Found;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
                self.element(value)
            }
            fn end(self) -> Result<(), Found> {
                Ok(())
            }
        }
    )*};
}

seq_like! {
    SerializeSeq::serialize_element;
    SerializeTuple::serialize_element;
    SerializeTupleStruct::serialize_field;
    SerializeTupleVariant::serialize_field;
}

impl ser::SerializeStruct for Seq<'_> {
    type Ok = ();
    type Error = Found;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Found> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), Found> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Seq<'_> {
    type Ok = ();
    type Error = Found;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Found> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), Found> {
        Ok(())
    }
}

/// Maps: each value under its key, when the key is text or a number.
struct Map<'a> {
    checker: &'a mut Checker,
    key: String,
}

impl ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = Found;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Found> {
        self.key = key.serialize(KeyText).unwrap_or_else(|_| "?".to_owned());
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
        let segment = format!("[{}]", crate::error::quote(&self.key));
        self.checker.nested(segment, value)
    }

    fn end(self) -> Result<(), Found> {
        Ok(())
    }
}

/// A map key as text, for the path.
struct KeyText;

macro_rules! key_display {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method(self, v: $ty) -> Result<String, Found> {
            Ok(v.to_string())
        }
    )*};
}

impl ser::Serializer for KeyText {
    type Ok = String;
    type Error = Found;
    type SerializeSeq = Impossible<String, Found>;
    type SerializeTuple = Impossible<String, Found>;
    type SerializeTupleStruct = Impossible<String, Found>;
    type SerializeTupleVariant = Impossible<String, Found>;
    type SerializeMap = Impossible<String, Found>;
    type SerializeStruct = Impossible<String, Found>;
    type SerializeStructVariant = Impossible<String, Found>;

    key_display! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32); serialize_i64(i64);
        serialize_i128(i128); serialize_u8(u8); serialize_u16(u16); serialize_u32(u32); serialize_u64(u64);
        serialize_u128(u128); serialize_f32(f32); serialize_f64(f64); serialize_char(char); serialize_str(&str);
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<String, Found> {
        Err(Found::Other)
    }
    fn serialize_none(self) -> Result<String, Found> {
        Err(Found::Other)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<String, Found> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<String, Found> {
        Err(Found::Other)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, Found> {
        Err(Found::Other)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<String, Found> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<String, Found> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Found> {
        Err(Found::Other)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Found> {
        Err(Found::Other)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Found> {
        Err(Found::Other)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Found> {
        Err(Found::Other)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Found> {
        Err(Found::Other)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Found> {
        Err(Found::Other)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Found> {
        Err(Found::Other)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Found> {
        Err(Found::Other)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(serde::Serialize)]
    struct Prediction {
        class: u8,
        probability: f64,
        spread: Vec<f32>,
    }

    #[test]
    fn finite_values_pass() {
        assert_eq!(find_non_finite(&1.5f64), None);
        assert_eq!(find_non_finite(&Prediction { class: 1, probability: 0.5, spread: vec![0.1] }), None);
        assert_eq!(find_non_finite(&serde_json::json!({"a": [1, 2.5, null]})), None);
    }

    #[test]
    fn the_first_non_finite_float_is_found_with_its_path() {
        assert_eq!(find_non_finite(&f64::NAN), Some((String::new(), "NaN".into())));
        let p = Prediction { class: 0, probability: f64::INFINITY, spread: vec![] };
        assert_eq!(find_non_finite(&p), Some((".probability".into(), "inf".into())));
        let p = Prediction { class: 0, probability: 0.5, spread: vec![0.0, f32::NEG_INFINITY] };
        assert_eq!(find_non_finite(&p), Some((".spread[1]".into(), "-inf".into())));
        let map = BTreeMap::from([("x", vec![1.0, f64::NAN])]);
        assert_eq!(find_non_finite(&map), Some(("[\"x\"][1]".into(), "NaN".into())));
        assert_eq!(find_non_finite(&Some((1, f32::NAN))), Some(("[1]".into(), "NaN".into())));
    }
}
