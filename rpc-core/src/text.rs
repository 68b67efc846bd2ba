//! The text shape of values: decoding a space-free token into any `Deserialize` type, and
//! rendering a result or an argument back to text.
//!
//! Decoding is driven by the target type, the way serde formats work:
//! - `String`/`&str`/`char` take the token verbatim;
//! - integers, floats and `bool` parse with Rust's own `FromStr` rules;
//! - `Option<T>` is `None` for the token `null`, otherwise `T` from the token;
//! - a unit enum variant is its name (`add`, or whatever `#[serde(rename)]` says);
//! - anything else (sequences, maps, structs, `serde_json::Value`) reads the token as JSON,
//!   e.g. `[1,2,3]` or `{"x":1}`.
//!
//! Rendering is the inverse: strings verbatim, numbers in their natural form (`4`, `0.5`),
//! `true`/`false`, `null`, and compact JSON for arrays and objects. Which text may travel as
//! one token of the TCP protocol is that protocol's business (`rpc-transport-tcp`'s `frame`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde_json::Value;

use crate::error::quote;

/// Why a token did not decode. Its message names the expected form and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextError(String);

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TextError {}

impl de::Error for TextError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TextError(msg.to_string())
    }
}

/// Decodes one text token into `T`.
///
/// # Errors
/// When the token is not a valid `T`; the message quotes the token.
pub fn from_token<T: DeserializeOwned>(token: &str) -> Result<T, TextError> {
    T::deserialize(Token(token))
}

/// Decodes a run of tokens into a sequence type (`Vec<T>`, `[T; N]`, a tuple).
///
/// # Errors
/// When any token is not a valid element; the message quotes it.
pub fn from_tokens<T: DeserializeOwned, S: AsRef<str>>(tokens: &[S]) -> Result<T, TextError> {
    let seq = de::value::SeqDeserializer::<_, TextError>::new(tokens.iter().map(|t| Token(t.as_ref())));
    T::deserialize(seq)
}

/// A single text token viewed as a serde `Deserializer`.
#[derive(Debug, Clone, Copy)]
pub struct Token<'a>(pub &'a str);

impl<'de> IntoDeserializer<'de, TextError> for Token<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Token<'de> {
    fn parse<T: FromStr>(&self, what: &str) -> Result<T, TextError>
    where
        T::Err: fmt::Display,
    {
        self.0.parse::<T>().map_err(|e| TextError(format!("{e}: expected {what}, got {}", quote(self.0))))
    }

    fn json<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        let mut de = serde_json::Deserializer::from_str(self.0);
        let value = de::Deserializer::deserialize_any(&mut de, visitor)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| TextError(format!("{e}: expected JSON, got {}", quote(self.0))))?;
        Ok(value)
    }
}

macro_rules! parse_number {
    ($($method:ident => $ty:ty, $visit:ident, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
            visitor.$visit(self.parse::<$ty>($what)?)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Token<'de> {
    type Error = TextError;

    /// Self-describing targets (`serde_json::Value`, untagged enums) see JSON when the token
    /// is JSON, and a string otherwise.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        match serde_json::from_str::<Value>(self.0) {
            Ok(value) => de::Deserializer::deserialize_any(value, visitor).map_err(|e| TextError(e.to_string())),
            Err(_) => visitor.visit_borrowed_str(self.0),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        match self.0 {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            other => Err(TextError(format!("expected true or false, got {}", quote(other)))),
        }
    }

    parse_number! {
        deserialize_i8 => i8, visit_i8, "an integer (i8)";
        deserialize_i16 => i16, visit_i16, "an integer (i16)";
        deserialize_i32 => i32, visit_i32, "an integer (i32)";
        deserialize_i64 => i64, visit_i64, "an integer (i64)";
        deserialize_i128 => i128, visit_i128, "an integer (i128)";
        deserialize_u8 => u8, visit_u8, "an unsigned integer (u8)";
        deserialize_u16 => u16, visit_u16, "an unsigned integer (u16)";
        deserialize_u32 => u32, visit_u32, "an unsigned integer (u32)";
        deserialize_u64 => u64, visit_u64, "an unsigned integer (u64)";
        deserialize_u128 => u128, visit_u128, "an unsigned integer (u128)";
        deserialize_f32 => f32, visit_f32, "a number (f32)";
        deserialize_f64 => f64, visit_f64, "a number (f64)";
        deserialize_char => char, visit_char, "a single character";
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        visitor.visit_borrowed_bytes(self.0.as_bytes())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        visitor.visit_borrowed_bytes(self.0.as_bytes())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        if self.0 == "null" {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TextError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TextError> {
        if self.0.starts_with(['{', '"']) {
            let mut de = serde_json::Deserializer::from_str(self.0);
            return de::Deserializer::deserialize_any(&mut de, visitor)
                .map_err(|e| TextError(format!("{e}: got {}", quote(self.0))));
        }
        visitor.visit_enum(de::value::BorrowedStrDeserializer::<TextError>::new(self.0))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        self.json(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, TextError> {
        self.json(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        self.json(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, TextError> {
        self.json(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TextError> {
        self.json(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        self.json(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TextError> {
        self.json(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TextError> {
        visitor.visit_unit()
    }
}

/// Renders a value as reply text: strings verbatim, numbers in natural form, compact JSON
/// for arrays and objects.
pub fn render(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => render_number(n),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Array(_) | Value::Object(_) => value.to_string(),
    }
}

fn render_number(n: &serde_json::Number) -> String {
    if n.is_f64() {
        if let Some(f) = n.as_f64() {
            // Rust's Display prints 4.0 as "4" and never uses an exponent; keep it for the
            // range where that reads naturally, and use the exponent form outside it.
            let magnitude = f.abs();
            if magnitude == 0.0 || (1e-6..1e16).contains(&magnitude) {
                return format!("{f}");
            }
            return format!("{f:e}");
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    enum Op {
        #[serde(rename = "+")]
        Add,
        #[serde(rename = "-")]
        Sub,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[test]
    fn primitives_parse_with_rust_rules() {
        assert_eq!(from_token::<i64>("-42").unwrap(), -42);
        assert_eq!(from_token::<f64>("2.5").unwrap(), 2.5);
        assert_eq!(from_token::<f32>("2").unwrap(), 2.0);
        assert!(from_token::<bool>("true").unwrap());
        assert_eq!(from_token::<char>("x").unwrap(), 'x');
    }

    #[test]
    fn strings_take_the_token_verbatim_even_when_it_looks_like_json() {
        assert_eq!(from_token::<String>("[1,2]").unwrap(), "[1,2]");
        assert_eq!(from_token::<String>("\"q\"").unwrap(), "\"q\"");
    }

    #[test]
    fn bad_number_names_expected_type_and_token() {
        let err = from_token::<f64>("two").unwrap_err().to_string();
        assert!(err.contains("invalid float literal"), "{err}");
        assert!(err.contains("\"two\""), "{err}");
        let err = from_token::<u8>("300").unwrap_err().to_string();
        assert!(err.contains("u8") && err.contains("\"300\""), "{err}");
    }

    #[test]
    fn structured_types_read_json() {
        assert_eq!(from_token::<Vec<i32>>("[1,2,3]").unwrap(), vec![1, 2, 3]);
        assert_eq!(from_token::<Point>(r#"{"x":1,"y":2}"#).unwrap(), Point { x: 1, y: 2 });
        assert_eq!(from_token::<Value>("[1]").unwrap(), json!([1]));
        assert_eq!(from_token::<Value>("hello").unwrap(), json!("hello"));
        assert!(from_token::<Vec<i32>>("[1,2").is_err());
        assert!(from_token::<Vec<i32>>("[1] trailing").is_err());
    }

    #[test]
    fn unit_enum_variants_are_their_names() {
        assert_eq!(from_token::<Op>("+").unwrap(), Op::Add);
        assert_eq!(from_token::<Op>("-").unwrap(), Op::Sub);
        let err = from_token::<Op>("^").unwrap_err().to_string();
        assert!(err.contains("unknown variant"), "{err}");
    }

    #[test]
    fn options_use_null() {
        assert_eq!(from_token::<Option<i32>>("null").unwrap(), None);
        assert_eq!(from_token::<Option<i32>>("7").unwrap(), Some(7));
        assert_eq!(from_token::<Option<String>>("abc").unwrap(), Some("abc".into()));
    }

    #[test]
    fn token_runs_decode_as_sequences() {
        let v: Vec<f32> = from_tokens(&["0.5", "1", "0.25"]).unwrap();
        assert_eq!(v, vec![0.5, 1.0, 0.25]);
        let err = from_tokens::<Vec<f32>, _>(&["0.5", "x"]).unwrap_err().to_string();
        assert!(err.contains("\"x\""), "{err}");
    }

    #[test]
    fn render_uses_natural_forms() {
        assert_eq!(render(&json!(4.0)), "4");
        assert_eq!(render(&json!(0.5)), "0.5");
        assert_eq!(render(&json!(-3)), "-3");
        assert_eq!(render(&json!(1e300)), "1e300");
        assert_eq!(render(&json!("hi there")), "hi there");
        assert_eq!(render(&json!([1, "a"])), r#"[1,"a"]"#);
        assert_eq!(render(&json!(null)), "null");
    }

    #[test]
    fn render_then_parse_round_trips_floats() {
        for f in [0.1f64, 4.0, -2.5e-9, 123456.789, 1e20, f64::MAX] {
            let text = render(&json!(f));
            assert_eq!(from_token::<f64>(&text).unwrap(), f, "{text}");
        }
    }
}
