//! The [`Service`] trait and the description of a service that `#[rpc_service]` derives from
//! the `impl` block at compile time: [`ServiceInfo`], [`MethodInfo`], [`ParamInfo`],
//! [`TypeInfo`].
//!
//! A description says everything a caller needs without the source: names, parameters with
//! their Rust types and JSON Schemas, return types, doc comments. [`ServiceInfo::describe`]
//! renders it as JSON; transports answer "what do you serve" with it, and the HTTP front
//! derives its OpenAPI document from it.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use schemars::{Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::{Args, BlockingPool, Context, RpcError};

/// Service names starting with this are the framework's own (health probes, descriptions)
/// and are refused for user services. The framework's own requests use it as their service:
/// `_rpc describe`, `_rpc health`.
pub const RESERVED_PREFIX: &str = "_rpc";

/// The method of the reserved request that answers a server's descriptions
/// (`Registry::describe`): `_rpc describe` over TCP, routing key `_rpc.describe` over RabbitMQ,
/// `GET /rpc` over HTTP.
pub const DESCRIBE: &str = "describe";

/// A service: a named set of methods callable by name with [`Args`].
///
/// You normally get this from `#[rpc_service]` on an inherent `impl` block; implementing it by
/// hand is possible (see the crate tests) but rarely needed.
pub trait Service: Send + Sync + 'static {
    /// The service's wire name and its methods.
    fn info(&self) -> &'static ServiceInfo;

    /// Calls `method` with `args`.
    ///
    /// Arguments are decoded before the returned future is created, so a malformed call fails
    /// without touching the blocking pool. Synchronous methods run on `pool`; methods that take
    /// a `&Context` get `ctx`.
    ///
    /// # Errors
    /// [`RpcError::UnknownMethod`], an argument error, or the handler's own error. Panics,
    /// deadlines and cancellation are handled by the caller of this method
    /// ([`run`](crate::run::run)).
    fn call(
        self: Arc<Self>,
        method: &str,
        args: Args,
        ctx: &Context,
        pool: &BlockingPool,
    ) -> Result<BoxFuture<'static, Result<Value, RpcError>>, RpcError>;
}

/// Describes a service: its wire name and its methods.
#[derive(Debug)]
pub struct ServiceInfo {
    /// Wire name, e.g. `calculator`.
    pub name: &'static str,
    /// The doc comment of the `impl` block, if any.
    pub doc: &'static str,
    /// The RPC methods, in declaration order.
    pub methods: &'static [MethodInfo],
}

impl ServiceInfo {
    /// Builds the metadata (used by the generated code).
    #[doc(hidden)]
    pub const fn new(name: &'static str, doc: &'static str, methods: &'static [MethodInfo]) -> Self {
        ServiceInfo { name, doc, methods }
    }

    /// The method with wire name `name`.
    pub fn method(&self, name: &str) -> Option<&'static MethodInfo> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The wire names of all methods.
    pub fn method_names(&self) -> Vec<String> {
        self.methods.iter().map(|m| m.name.to_owned()).collect()
    }

    /// The description as JSON, its types' schemas referring to definitions in `generator`
    /// (so several services can share one set of definitions, as an OpenAPI document does):
    ///
    /// ```json
    /// {"name": "calculator", "doc": "...", "methods": [{"name": "calculate", "target": "calculator.calculate",
    ///   "doc": "...", "params": [{"name": "a", "type": "f64", "schema": {"type": "number", "format": "double"}}, ...],
    ///   "variadic": false, "returns": {"type": "f64", "schema": {...}}, "blocking": false}]}
    /// ```
    #[doc(hidden)]
    pub fn describe_with(&self, generator: &mut SchemaGenerator) -> Value {
        let methods: Vec<Value> = self.methods.iter().map(|m| m.describe_with(generator)).collect();
        json!({"name": self.name, "doc": self.doc, "methods": methods})
    }

    /// The description as one self-contained JSON document: [`ServiceInfo::describe_with`] plus
    /// the definitions its schemas refer to, under `definitions`.
    pub fn describe(&self) -> Value {
        let mut generator = generator();
        let mut value = self.describe_with(&mut generator);
        value["definitions"] = definitions(&mut generator);
        value
    }
}

/// The schema generator descriptions use: JSON Schema 2020-12, definitions under
/// `#/definitions/` (the same place [`describe`](ServiceInfo::describe) puts them).
pub fn generator() -> SchemaGenerator {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/definitions".into();
    settings.into_generator()
}

/// The definitions `generator` collected, as one JSON object.
pub fn definitions(generator: &mut SchemaGenerator) -> Value {
    let defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    Value::Object(defs)
}

/// Describes one method: how to call it, and what it returns.
#[derive(Debug)]
pub struct MethodInfo {
    /// Wire name, e.g. `calculate`.
    pub name: &'static str,
    /// `service.method`, used in error messages and logs.
    pub target: &'static str,
    /// The parameters callers pass, in order (a `&Context` parameter is not one of them).
    pub params: &'static [ParamInfo],
    /// Whether the last parameter collects all remaining positional tokens.
    pub variadic: bool,
    /// What a successful call returns: the method's return type, or `T` of `Result<T, E>`.
    pub returns: TypeInfo,
    /// The return type as written in the source (`Result<f64, CalcError>`).
    #[doc(hidden)]
    pub returns_as_written: &'static str,
    /// Whether the method runs on the blocking pool (synchronous and not `#[rpc(inline)]`).
    #[doc(hidden)]
    pub blocking: bool,
    /// Whether the method takes the call's [`Context`].
    #[doc(hidden)]
    pub takes_context: bool,
    /// The method's doc comment.
    pub doc: &'static str,
    text_to_named: fn(Vec<String>) -> Result<Args, RpcError>,
}

impl MethodInfo {
    /// Builds the metadata (used by the generated code).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        target: &'static str,
        params: &'static [ParamInfo],
        variadic: bool,
        returns: TypeInfo,
        returns_as_written: &'static str,
        blocking: bool,
        takes_context: bool,
        doc: &'static str,
        text_to_named: fn(Vec<String>) -> Result<Args, RpcError>,
    ) -> Self {
        MethodInfo {
            name,
            target,
            params,
            variadic,
            returns,
            returns_as_written,
            blocking,
            takes_context,
            doc,
            text_to_named,
        }
    }

    /// The parameters as `name: Type`, for error messages.
    #[doc(hidden)]
    pub fn param_list(&self) -> Vec<String> {
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let rest = if self.variadic && i + 1 == self.params.len() { "..." } else { "" };
                format!("{}{rest}: {}", p.name, p.ty.rust)
            })
            .collect()
    }

    /// A one-line signature: `calculate(a: f64, op: String, b: f64) -> Result<f64, CalcError>`.
    pub fn signature(&self) -> String {
        format!("{}({}) -> {}", self.name, self.param_list().join(", "), self.returns_as_written)
    }

    /// Positional text tokens as the named arguments they stand for, decoded by each
    /// parameter's type exactly as a server decodes a text call (`2 + 2` for
    /// `calculate(a: f64, op: String, b: f64)` gives `{"a": 2.0, "op": "+", "b": 2.0}`), so a
    /// text front-end (a command line, the TCP protocol) can call over a transport that
    /// carries named arguments.
    ///
    /// # Errors
    /// The errors a server gives the same tokens: [`RpcError::ArgumentCount`],
    /// [`RpcError::InvalidArgument`] naming the parameter and its type.
    #[doc(hidden)]
    pub fn args_from_text(&self, tokens: Vec<String>) -> Result<Args, RpcError> {
        (self.text_to_named)(tokens)
    }

    /// Positional JSON values (a JSON array) as named arguments, in parameter order; the
    /// values of a variadic last parameter are collected into one array.
    ///
    /// # Errors
    /// [`RpcError::ArgumentCount`] when there are too few values, or too many for a method
    /// that is not variadic.
    #[doc(hidden)]
    pub fn args_from_positional(&self, mut values: Vec<Value>) -> Result<Args, RpcError> {
        let fixed = if self.variadic { self.params.len().saturating_sub(1) } else { self.params.len() };
        if values.len() < fixed || (!self.variadic && values.len() > fixed) {
            return Err(RpcError::ArgumentCount {
                target: self.target.to_owned(),
                expected: fixed,
                variadic: self.variadic,
                got: values.len(),
                params: self.param_list(),
            });
        }
        let rest = values.split_off(fixed);
        let mut map: Map<String, Value> = self.params.iter().map(|p| p.name.to_owned()).zip(values).collect();
        if let (true, Some(last)) = (self.variadic, self.params.last()) {
            map.insert(last.name.to_owned(), Value::Array(rest));
        }
        Ok(Args::Named(map))
    }

    /// The method's description as JSON (see [`ServiceInfo::describe_with`]).
    #[doc(hidden)]
    pub fn describe_with(&self, generator: &mut SchemaGenerator) -> Value {
        let params: Vec<Value> = self
            .params
            .iter()
            .map(|p| json!({"name": p.name, "type": p.ty.rust, "schema": p.ty.schema(generator)}))
            .collect();
        json!({
            "name": self.name,
            "target": self.target,
            "doc": self.doc,
            "params": params,
            "variadic": self.variadic,
            "returns": {"type": self.returns.rust, "schema": self.returns.schema(generator)},
            "blocking": self.blocking,
        })
    }
}

/// Describes one parameter.
#[derive(Debug)]
pub struct ParamInfo {
    /// The parameter's name, which is also its key in named-argument calls.
    pub name: &'static str,
    /// Its type.
    pub ty: TypeInfo,
}

impl ParamInfo {
    /// Builds the metadata (used by the generated code).
    #[doc(hidden)]
    #[doc(hidden)]
    pub const fn new(name: &'static str, ty: TypeInfo) -> Self {
        ParamInfo { name, ty }
    }
}

/// A Rust type in a description: as written, and its JSON Schema.
#[derive(Clone, Copy)]
pub struct TypeInfo {
    /// The type as written in the source (`Vec<f32>`).
    pub rust: &'static str,
    schema: fn(&mut SchemaGenerator) -> Schema,
}

impl std::fmt::Debug for TypeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.rust)
    }
}

impl TypeInfo {
    /// Builds the metadata (used by the generated code).
    #[doc(hidden)]
    #[doc(hidden)]
    pub const fn new(rust: &'static str, schema: fn(&mut SchemaGenerator) -> Schema) -> Self {
        TypeInfo { rust, schema }
    }

    /// The type's JSON Schema, as a reference into `generator`'s definitions for named types.
    ///
    /// A type that implements `schemars::JsonSchema` (numbers, strings, collections, and your
    /// types with `#[derive(JsonSchema)]`) has its exact schema; any other type gets an open
    /// schema (`{}`) whose description names the Rust type.
    #[doc(hidden)]
    pub fn schema(&self, generator: &mut SchemaGenerator) -> Value {
        (self.schema)(generator).to_value()
    }
}

/// Picks a type's schema at compile time: its `JsonSchema` impl when it has one, an open schema
/// naming the type otherwise (autoref specialisation; the generated code calls
/// `(&&SchemaProbe::<T>::new()).schema(g)`).
#[doc(hidden)]
pub mod probe {
    use std::marker::PhantomData;

    use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

    /// Stands for type `T`.
    pub struct SchemaProbe<T: ?Sized>(PhantomData<T>);

    impl<T: ?Sized> SchemaProbe<T> {
        /// A probe for `T`.
        #[doc(hidden)]
        pub const fn new() -> Self {
            SchemaProbe(PhantomData)
        }
    }

    impl<T: ?Sized> Default for SchemaProbe<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// Chosen when `T: JsonSchema`.
    pub trait ViaJsonSchema {
        /// `T`'s schema.
        fn schema(&self, generator: &mut SchemaGenerator) -> Schema;
    }

    impl<T: JsonSchema + ?Sized> ViaJsonSchema for &SchemaProbe<T> {
        fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
            generator.subschema_for::<T>()
        }
    }

    /// Chosen for every other type.
    pub trait Fallback {
        /// An open schema naming the type.
        fn schema(&self, generator: &mut SchemaGenerator) -> Schema;
    }

    impl<T: ?Sized> Fallback for &&SchemaProbe<T> {
        fn schema(&self, _: &mut SchemaGenerator) -> Schema {
            let name = std::any::type_name::<T>();
            json_schema!({
                "description": format!("Rust type `{name}` (it has no JSON Schema: derive `schemars::JsonSchema` for one)")
            })
        }
    }
}
