//! Properties of the text codec: no input makes it panic, and what it renders it reads back.

use proptest::prelude::*;
use rpc_core::text::{from_token, from_tokens, render};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
enum Op {
    #[serde(rename = "+")]
    Add,
    Named {
        x: i32,
    },
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Point {
    x: f64,
    y: Option<Vec<u8>>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_any_token_into_any_type_never_panics(token in any::<String>()) {
        let _ = from_token::<i64>(&token);
        let _ = from_token::<u8>(&token);
        let _ = from_token::<f32>(&token);
        let _ = from_token::<bool>(&token);
        let _ = from_token::<char>(&token);
        let _ = from_token::<String>(&token);
        let _ = from_token::<Option<i32>>(&token);
        let _ = from_token::<Vec<f64>>(&token);
        let _ = from_token::<(u8, String)>(&token);
        let _ = from_token::<Op>(&token);
        let _ = from_token::<Point>(&token);
        let _ = from_token::<Value>(&token);
        let _ = from_tokens::<Vec<i16>, _>(&[token.as_str(), "1"]);
    }

    #[test]
    fn json_looking_tokens_never_panic(token in r#"[\[\]{}",:0-9a-z.\-eE ]{0,40}"#) {
        let _ = from_token::<Vec<Value>>(&token);
        let _ = from_token::<Point>(&token);
        let _ = from_token::<Op>(&token);
    }

    #[test]
    fn strings_round_trip_verbatim(s in "[^ \r\n]{1,40}") {
        let token = render(&json!(s));
        prop_assert_eq!(from_token::<String>(&token).unwrap(), s);
    }

    #[test]
    fn integers_round_trip(n in any::<i64>()) {
        let token = render(&json!(n));
        prop_assert_eq!(from_token::<i64>(&token).unwrap(), n);
    }

    #[test]
    fn finite_floats_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let token = render(&json!(f));
        prop_assert_eq!(from_token::<f64>(&token).unwrap(), f);
    }

    #[test]
    fn structured_values_round_trip_through_json_tokens(v in proptest::collection::vec(any::<i32>(), 0..20)) {
        let token = render(&json!(v));
        prop_assert_eq!(from_token::<Vec<i32>>(&token).unwrap(), v);
    }

    #[test]
    fn rendering_never_panics(s in any::<String>()) {
        prop_assert_eq!(render(&json!(s.clone())), s.clone());
        let _ = render(&json!([s]));
    }
}
