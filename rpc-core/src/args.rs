//! [`Args`]: the two shapes arguments arrive in, and [`ArgReader`], which decodes them into a
//! method's parameters.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::quote;
use crate::service::MethodInfo;
use crate::text;
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
                        name: clip(name),
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
                text::from_token(&token).map_err(|e| self.invalid(index, token.clone(), token.len(), e.to_string()))
            }
            ArgsState::Named(map) => match map.remove(param.name) {
                Some(value) => self.decode_value(index, value),
                None => T::deserialize(Value::Null).map_err(|_| RpcError::MissingArgument {
                    target: self.info.target.to_owned(),
                    param: param.name.to_owned(),
                    ty: param.ty.rust.to_owned(),
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
                text::from_tokens(&rest).map_err(|e| {
                    let shown = rest.join(" ");
                    self.invalid(index, shown.clone(), shown.len(), e.to_string())
                })
            }
            ArgsState::Named(_) => self.arg(index),
        }
    }

    fn decode_value<T: DeserializeOwned>(&self, index: usize, value: Value) -> Result<T, RpcError> {
        T::deserialize(&value).map_err(|e| {
            let len = match &value {
                Value::String(s) => s.len(),
                other => other.to_string().len(),
            };
            self.invalid(index, value.to_string(), len, e.to_string())
        })
    }

    /// The error for an argument that did not decode. What the caller sent is echoed bounded
    /// (a prefix and its length), however large it was.
    /// `len` is the size of what was sent (a string's own length, not its JSON form's).
    fn invalid(&self, index: usize, value: String, len: usize, reason: String) -> RpcError {
        let param = &self.info.params[index];
        RpcError::InvalidArgument {
            target: self.info.target.to_owned(),
            param: param.name.to_owned(),
            ty: param.ty.rust.to_owned(),
            reason: bound_reason(reason, len),
            value: clip(&value),
        }
    }
}

/// `text` as an error field: whole when short, else a prefix and its length.
pub(crate) fn clip(text: &str) -> String {
    if text.chars().nth(crate::error::QUOTE_LIMIT).is_none() {
        text.to_owned()
    } else {
        quote(text)
    }
}

/// A decoder's reason, which may quote the offending value (of `len` bytes) in full (serde's
/// `invalid type: string "…"`): cut to a few hundred bytes, naming the value's length.
pub(crate) fn bound_reason(reason: String, len: usize) -> String {
    const MAX_REASON: usize = 320;
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut end = MAX_REASON / 2;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (the value is {len} bytes)", &reason[..end])
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
