//! [`Args`]: the two shapes arguments arrive in, and [`ArgReader`], which decodes them into a
//! method's parameters.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::service::MethodInfo;
use crate::text::{self, TextError};
use crate::RpcError;

/// The arguments of one call.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Args {
    /// Positional text tokens, as the TCP protocol delivers them:
    /// `calculator calculate 2 + 2` gives `["2", "+", "2"]`.
    Text(Vec<String>),
    /// Named values, as MessagePack or JSON maps deliver them: `{"a": 2, "op": "+", "b": 2}`.
    /// Order is kept, so a typed client's arguments can also be rendered as tokens.
    Named(Map<String, Value>),
}

impl Args {
    /// How many arguments there are.
    pub fn len(&self) -> usize {
        match self {
            Args::Text(tokens) => tokens.len(),
            Args::Named(map) => map.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names positional text tokens after `info`'s parameters, for a text front-end (a
    /// command line, the seed's text protocol) to a transport that carries named arguments:
    /// `2 + 2` for `calculator.calculate(a: f64, op: String, b: f64)` becomes
    /// `{"a": 2, "op": "+", "b": 2}`.
    ///
    /// Each token becomes a JSON value by its parameter's declared type ([`ParamInfo::ty`]):
    /// - a string type (`String`, `str`, `char`, by any path, behind `&`, `Box`, `Rc`, `Arc`
    ///   or `Cow`) takes the token verbatim, even when it looks like JSON (`42` stays the
    ///   string `"42"`), as the text codec does; an `Option` of one reads `null` as `None`;
    /// - any other type takes the token parsed as JSON (`2`, `1e3`, `true`, `[1,2]`,
    ///   `{"x":1}`, `null`), or the token as a string when it is not JSON, so that the server,
    ///   which knows the type, reports what it expected (`two` for an `f64`);
    /// - a variadic last parameter takes all remaining tokens as an array, each by the rule
    ///   of the element type (`Vec<f32>`, `Vec<String>`, `[T; N]`...).
    ///
    /// Numbers follow JSON's grammar here, not Rust's `FromStr`: `.5`, `+5`, `007` and `inf`
    /// travel as strings and the server refuses them for a numeric parameter.
    ///
    /// # Errors
    /// [`RpcError::ArgumentCount`] when there are too few tokens, or too many for a method
    /// that is not variadic: the check and message a text call gets from the server.
    ///
    /// [`ParamInfo::ty`]: crate::ParamInfo::ty
    pub fn text_to_named<S: Into<String>>(
        info: &MethodInfo,
        tokens: impl IntoIterator<Item = S>,
    ) -> Result<Args, RpcError> {
        let mut tokens: Vec<String> = tokens.into_iter().map(Into::into).collect();
        let params = info.params.len();
        let fixed = if info.variadic { params.saturating_sub(1) } else { params };
        if tokens.len() < fixed || (!info.variadic && tokens.len() > params) {
            return Err(RpcError::ArgumentCount {
                target: info.target.to_owned(),
                expected: fixed,
                variadic: info.variadic,
                got: tokens.len(),
                params: info.param_list(),
            });
        }
        let rest = tokens.split_off(fixed);
        let mut map = Map::with_capacity(params);
        for (param, token) in info.params.iter().zip(tokens) {
            map.insert(param.name.to_owned(), token_value(param.ty, token));
        }
        if info.variadic {
            if let Some(param) = info.params.last() {
                let ty = normalize(param.ty);
                let element = element_type(&ty).unwrap_or("");
                let items = rest.into_iter().map(|token| token_value(element, token)).collect();
                map.insert(param.name.to_owned(), Value::Array(items));
            }
        }
        Ok(Args::Named(map))
    }

    /// The arguments as text tokens, for text transports.
    ///
    /// Named values are rendered in order, which must be the parameters' order (`ordered`, see
    /// [`Request::ordered`](crate::Request::ordered)); when `variadic` is set the last value
    /// may be an array and each element becomes its own token.
    ///
    /// # Errors
    /// [`RpcError::BadRequest`] when named arguments come without the `ordered` promise, or a
    /// value cannot be one token (it contains a space, or is empty).
    pub fn into_tokens(self, ordered: bool, variadic: bool) -> Result<Vec<String>, RpcError> {
        let map = match self {
            Args::Text(tokens) => return Ok(tokens),
            Args::Named(map) if ordered => map,
            Args::Named(_) => {
                return Err(RpcError::bad_request(
                    "named arguments travel over a text transport only in parameter order: \
                     use Args::Text, or the typed client (which promises the order)",
                ))
            }
        };
        let count = map.len();
        let mut tokens = Vec::with_capacity(count);
        for (i, (name, value)) in map.into_iter().enumerate() {
            let bad = |e: TextError| RpcError::bad_request(format!("argument '{name}': {e}"));
            match value {
                Value::Array(items) if variadic && i + 1 == count => {
                    for item in &items {
                        tokens.push(text::to_token(item).map_err(bad)?);
                    }
                }
                value => tokens.push(text::to_token(&value).map_err(bad)?),
            }
        }
        Ok(tokens)
    }
}

/// One token as the JSON value a parameter of type `ty` (as written in the source) takes; see
/// [`Args::text_to_named`].
fn token_value(ty: &str, token: String) -> Value {
    let ty = normalize(ty);
    if is_text_type(&ty) {
        return Value::String(token);
    }
    if generic_arg(&ty, "Option").is_some_and(is_text_type) {
        return if token == "null" { Value::Null } else { Value::String(token) };
    }
    serde_json::from_str(&token).unwrap_or(Value::String(token))
}

/// `ty` with whitespace removed except one space between two words (`&'a str`, `&mut T`),
/// so `Option < String >` and `Option<String>` read the same.
fn normalize(ty: &str) -> String {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '\'';
    let mut out = String::with_capacity(ty.len());
    let mut pending_space = false;
    for c in ty.chars() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && word(c) && out.chars().next_back().is_some_and(word) {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
    }
    out
}

/// Whether `ty` (normalized) is a string type the text codec takes verbatim.
fn is_text_type(ty: &str) -> bool {
    let ty = strip_reference(ty);
    if matches!(last_segment(ty), "String" | "str" | "char") {
        return true;
    }
    ["Box", "Rc", "Arc", "Cow"].iter().any(|wrapper| generic_arg(ty, wrapper).is_some_and(is_text_type))
}

/// The element type of a variadic parameter's type (normalized): `Vec<T>`, `VecDeque<T>`,
/// `LinkedList<T>`, `[T; N]`, `&[T]`, `Box<[T]>`.
fn element_type(ty: &str) -> Option<&str> {
    let ty = strip_reference(ty);
    if let Some(inner) = ty.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return Some(&inner[..top_level(inner, ';').unwrap_or(inner.len())]);
    }
    if let Some(slice) = generic_arg(ty, "Box") {
        return element_type(slice);
    }
    ["Vec", "VecDeque", "LinkedList"].iter().find_map(|wrapper| generic_arg(ty, wrapper))
}

/// `ty` (normalized) without its leading `&`, `&'a`, `&mut`.
fn strip_reference(mut ty: &str) -> &str {
    while let Some(rest) = ty.strip_prefix('&') {
        ty = rest;
        if ty.starts_with('\'') {
            ty = ty.split_once(' ').map_or("", |(_, after)| after);
        }
        ty = ty.strip_prefix("mut ").unwrap_or(ty);
    }
    ty
}

/// The last path segment of a type without generics: `std::string::String` gives `String`.
fn last_segment(ty: &str) -> &str {
    ty.rsplit("::").next().unwrap_or(ty)
}

/// The type argument of `Wrapper<...>` (by any path; `ty` normalized), after any lifetime:
/// `T` for `std::sync::Arc<T>`, `str` for `Cow<'a,str>`.
fn generic_arg<'t>(ty: &'t str, wrapper: &str) -> Option<&'t str> {
    let open = ty.find('<')?;
    if last_segment(&ty[..open]) != wrapper {
        return None;
    }
    let inner = ty[open + 1..].strip_suffix('>')?;
    match top_level(inner, ',') {
        Some(comma) if inner.starts_with('\'') => Some(&inner[comma + 1..]),
        _ => Some(inner),
    }
}

/// The byte index of the first `needle` in `s` outside `<>`, `[]` and `()`.
fn top_level(s: &str, needle: char) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '<' | '[' | '(' => depth += 1,
            '>' | ']' | ')' => depth = depth.saturating_sub(1),
            c if c == needle && depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// Decodes a call's [`Args`] into the parameters of one method.
///
/// Generated code creates one per call, checks the shape with [`ArgReader::new`], then takes
/// each parameter in order with [`ArgReader::arg`] (and [`ArgReader::rest`] for a variadic last
/// parameter). Every error names the method, the parameter, its type and the offending value.
#[derive(Debug)]
pub struct ArgReader {
    info: &'static MethodInfo,
    args: ArgsState,
}

#[derive(Debug)]
enum ArgsState {
    Text(Vec<String>),
    Named(Map<String, Value>),
}

impl ArgReader {
    /// Checks the argument count (positional) or names (named) against `info`.
    ///
    /// # Errors
    /// [`RpcError::ArgumentCount`] or [`RpcError::UnexpectedArgument`].
    pub fn new(info: &'static MethodInfo, args: Args) -> Result<Self, RpcError> {
        let args = match args {
            Args::Text(tokens) => {
                let expected = info.params.len();
                let ok = if info.variadic { tokens.len() + 1 >= expected } else { tokens.len() == expected };
                if !ok {
                    return Err(RpcError::ArgumentCount {
                        target: info.target.to_owned(),
                        expected: if info.variadic { expected - 1 } else { expected },
                        variadic: info.variadic,
                        got: tokens.len(),
                        params: info.param_list(),
                    });
                }
                ArgsState::Text(tokens)
            }
            Args::Named(map) => {
                if let Some(name) = map.keys().find(|k| !info.params.iter().any(|p| p.name == k.as_str())) {
                    return Err(RpcError::UnexpectedArgument {
                        target: info.target.to_owned(),
                        name: name.clone(),
                        params: info.param_list(),
                    });
                }
                ArgsState::Named(map)
            }
        };
        Ok(ArgReader { info, args })
    }

    /// Decodes parameter number `index`.
    ///
    /// A named call may omit a parameter whose type accepts `null` (an `Option`).
    ///
    /// # Errors
    /// [`RpcError::InvalidArgument`] or [`RpcError::MissingArgument`].
    pub fn arg<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, RpcError> {
        let param = &self.info.params[index];
        match &mut self.args {
            ArgsState::Text(tokens) => {
                let token = std::mem::take(&mut tokens[index]);
                text::from_token(&token).map_err(|e| self.invalid(index, token, e.to_string()))
            }
            ArgsState::Named(map) => match map.remove(param.name) {
                Some(value) => self.decode_value(index, value),
                None => T::deserialize(Value::Null).map_err(|_| RpcError::MissingArgument {
                    target: self.info.target.to_owned(),
                    param: param.name.to_owned(),
                    ty: param.ty.to_owned(),
                }),
            },
        }
    }

    /// Decodes the variadic last parameter (number `index`) from all remaining tokens, or from
    /// its named value.
    ///
    /// # Errors
    /// As [`ArgReader::arg`].
    pub fn rest<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, RpcError> {
        match &mut self.args {
            ArgsState::Text(tokens) => {
                let rest = tokens.split_off(index);
                text::from_tokens(&rest).map_err(|e| self.invalid(index, rest.join(" "), e.to_string()))
            }
            ArgsState::Named(_) => self.arg(index),
        }
    }

    fn decode_value<T: DeserializeOwned>(&self, index: usize, value: Value) -> Result<T, RpcError> {
        T::deserialize(&value).map_err(|e| {
            let shown = value.to_string();
            self.invalid(index, shown, e.to_string())
        })
    }

    fn invalid(&self, index: usize, value: String, reason: String) -> RpcError {
        let param = &self.info.params[index];
        RpcError::InvalidArgument {
            target: self.info.target.to_owned(),
            param: param.name.to_owned(),
            ty: param.ty.to_owned(),
            value,
            reason,
        }
    }
}

/// Builds [`Args::Named`] from `key => value` pairs; values are anything `Serialize`.
///
/// ```
/// let args = rpc_core::kwargs! { "t" => 3, "label" => "nap" };
/// assert_eq!(args.len(), 2);
/// ```
///
/// # Panics
/// When a value cannot be represented as JSON (a map with non-string keys). Values built from
/// ordinary data never do.
#[macro_export]
macro_rules! kwargs {
    () => { $crate::Args::Named($crate::__private::serde_json::Map::new()) };
    ($($key:expr => $value:expr),+ $(,)?) => {{
        let mut map = $crate::__private::serde_json::Map::new();
        $(
            map.insert(::std::string::String::from($key),
                $crate::__private::serde_json::to_value(&$value).expect("kwargs! value must serialize to JSON"));
        )+
        $crate::Args::Named(map)
    }};
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ParamInfo;

    const CALCULATE: MethodInfo = MethodInfo::new(
        "calculate",
        "calculator.calculate",
        &[ParamInfo::new("a", "f64"), ParamInfo::new("op", "String"), ParamInfo::new("b", "f64")],
        false,
        "Result<f64, HandlerError>",
        true,
        "",
    );

    const PREDICT: MethodInfo = MethodInfo::new(
        "predict",
        "neural_net.predict",
        &[ParamInfo::new("inputs", "Vec<f32>")],
        true,
        "Prediction",
        true,
        "",
    );

    const TAG: MethodInfo = MethodInfo::new(
        "tag",
        "notes.tag",
        &[
            ParamInfo::new("id", "u64"),
            ParamInfo::new("note", "Option<String>"),
            ParamInfo::new("labels", "Vec<String>"),
        ],
        true,
        "()",
        false,
        "",
    );

    fn named(info: &MethodInfo, line: &str) -> Value {
        match Args::text_to_named(info, line.split(' ').filter(|t| !t.is_empty())) {
            Ok(Args::Named(map)) => Value::Object(map),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn text_to_named_names_each_token_after_its_parameter_in_order() {
        let args = named(&CALCULATE, "2 + 2");
        assert_eq!(args, json!({"a": 2, "op": "+", "b": 2}));
        let keys: Vec<&String> = args.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        assert_eq!(keys, ["a", "op", "b"]);
        assert_eq!(named(&CALCULATE, "1e3 * -2.5"), json!({"a": 1000.0, "op": "*", "b": -2.5}));
    }

    #[test]
    fn text_to_named_gives_a_string_parameter_its_token_verbatim_even_when_it_looks_like_json() {
        assert_eq!(named(&CALCULATE, "1 42 2")["op"], json!("42"));
        assert_eq!(named(&CALCULATE, "1 \"x\" 2")["op"], json!("\"x\""));
        assert_eq!(named(&CALCULATE, "1 [1,2] 2")["op"], json!("[1,2]"));
        assert_eq!(named(&CALCULATE, "1 null 2")["op"], json!("null"));
    }

    #[test]
    fn text_to_named_parses_other_parameters_as_json_and_falls_back_to_a_string() {
        const INFO: MethodInfo =
            MethodInfo::new("f", "s.f", &[ParamInfo::new("v", "serde_json::Value")], false, "()", false, "");
        let info = INFO;
        for (token, value) in [
            ("true", json!(true)),
            ("null", json!(null)),
            ("[1,2]", json!([1, 2])),
            ("{\"x\":1}", json!({"x": 1})),
            ("\"quoted\"", json!("quoted")),
            ("-0.5", json!(-0.5)),
            ("two", json!("two")),
            (".5", json!(".5")),
            ("[1,", json!("[1,")),
        ] {
            assert_eq!(named(&info, token), json!({ "v": value }), "token {token:?}");
        }
    }

    #[test]
    fn text_to_named_collects_the_remaining_tokens_of_a_variadic_parameter_into_an_array() {
        assert_eq!(named(&PREDICT, "1 0"), json!({"inputs": [1, 0]}));
        assert_eq!(named(&PREDICT, "0.25 1 -1"), json!({"inputs": [0.25, 1, -1]}));
        assert_eq!(named(&PREDICT, ""), json!({"inputs": []}));
        // Elements follow their own type: strings verbatim.
        assert_eq!(named(&TAG, "7 null 1 red"), json!({"id": 7, "note": null, "labels": ["1", "red"]}));
        assert_eq!(named(&TAG, "7 42"), json!({"id": 7, "note": "42", "labels": []}));
    }

    #[test]
    fn text_to_named_recognises_string_types_however_they_are_spelled() {
        for ty in [
            "String",
            "std::string::String",
            "::std::string::String",
            "&str",
            "&'static str",
            "& 'a str",
            "&mut String",
            "char",
            "Box<str>",
            "std::sync::Arc<str>",
            "Cow<'static, str>",
            "std::borrow::Cow < 'a , str >",
            "Rc<String>",
        ] {
            assert_eq!(token_value(ty, "12".into()), json!("12"), "{ty}");
        }
        for ty in ["Option<String>", "Option<&'a str>", "core::option::Option<std::string::String>"] {
            assert_eq!(token_value(ty, "12".into()), json!("12"), "{ty}");
            assert_eq!(token_value(ty, "null".into()), json!(null), "{ty}");
        }
        for ty in ["f64", "Vec<String>", "Option<u8>", "Stringy", "MyString<u8>", "HashMap<String, u8>"] {
            assert_eq!(token_value(ty, "12".into()), json!(12), "{ty}");
        }
        for (ty, element) in [
            ("Vec<f32>", "f32"),
            ("std::vec::Vec<String>", "String"),
            ("VecDeque<Cow<'a,str>>", "Cow<'a,str>"),
            ("[u8; 4]", "u8"),
            ("&[String]", "String"),
            ("Box<[char]>", "char"),
            ("Vec<(u8,String)>", "(u8,String)"),
        ] {
            assert_eq!(element_type(&normalize(ty)), Some(element), "{ty}");
        }
        assert_eq!(element_type("HashSet<u8>"), None);
    }

    #[test]
    fn text_to_named_refuses_a_wrong_token_count_as_a_text_call_would() {
        let few = Args::text_to_named(&CALCULATE, ["2", "+"]).unwrap_err();
        assert!(matches!(few, RpcError::ArgumentCount { expected: 3, got: 2, variadic: false, .. }), "{few:?}");
        assert_eq!(few.to_string(), "calculator.calculate: expected 3 arguments (a: f64, op: String, b: f64), got 2");
        let many = Args::text_to_named(&CALCULATE, ["2", "+", "2", "2"]).unwrap_err();
        assert!(matches!(many, RpcError::ArgumentCount { expected: 3, got: 4, .. }), "{many:?}");
        let variadic = Args::text_to_named(&TAG, ["7"]).unwrap_err();
        assert_eq!(
            variadic.to_string(),
            "notes.tag: expected at least 2 arguments (id: u64, note: Option<String>, labels...: Vec<String>), got 1"
        );
        // Text and named shapes of the same call are refused alike by the server.
        let text = ArgReader::new(&CALCULATE, Args::Text(vec!["2".into(), "+".into()])).unwrap_err();
        assert_eq!(text.to_string(), few.to_string());
    }

    #[test]
    fn text_to_named_arguments_decode_to_the_same_values_as_the_tokens_themselves() {
        for line in ["2 + 2", "1e3 * -2.5", "0.1 / 7", "-3 ^ 4"] {
            let tokens: Vec<String> = line.split(' ').map(str::to_owned).collect();
            let mut text = ArgReader::new(&CALCULATE, Args::Text(tokens.clone())).unwrap();
            let mut named = ArgReader::new(&CALCULATE, Args::text_to_named(&CALCULATE, tokens).unwrap()).unwrap();
            assert_eq!(text.arg::<f64>(0).unwrap(), named.arg::<f64>(0).unwrap(), "{line}");
            assert_eq!(text.arg::<String>(1).unwrap(), named.arg::<String>(1).unwrap(), "{line}");
            assert_eq!(text.arg::<f64>(2).unwrap(), named.arg::<f64>(2).unwrap(), "{line}");
        }
        let mut text = ArgReader::new(&PREDICT, Args::Text(vec!["1".into(), "0".into()])).unwrap();
        let mut named = ArgReader::new(&PREDICT, Args::text_to_named(&PREDICT, ["1", "0"]).unwrap()).unwrap();
        assert_eq!(text.rest::<Vec<f32>>(0).unwrap(), named.rest::<Vec<f32>>(0).unwrap());
        // A token that is not a number is refused by the server, naming the argument.
        let mut bad = ArgReader::new(&CALCULATE, Args::text_to_named(&CALCULATE, ["two", "+", "2"]).unwrap()).unwrap();
        let error = bad.arg::<f64>(0).unwrap_err();
        assert!(
            error.to_string().starts_with("calculator.calculate: argument 'a' (f64): invalid type: string \"two\""),
            "{error}"
        );
    }
}
