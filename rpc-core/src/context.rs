//! [`Context`]: what travels with every call besides its arguments — the caller's deadline,
//! metadata (string keys and values, bounded), a trace id that follows nested calls, and a
//! cancellation signal — and [`Metadata`] itself.
//!
//! The caller sets the deadline and the metadata; every transport carries them (RabbitMQ in
//! message headers, HTTP in request headers, in memory as they are); the server hands the
//! handler the same values in a `Context` of its own, whose cancellation signal fires when the
//! deadline passes or the caller goes away. A method opts in by taking `ctx: &Context` as a
//! parameter.
//!
//! While a handler runs, its context is the *current* one ([`Context::current`]): calls the
//! handler makes through any typed client inherit what is left of its deadline, its metadata
//! and its trace id.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most metadata entries one call may carry.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY: usize = 64;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE: usize = 4096;
/// Most bytes all metadata keys and values of one call may add up to.
pub const MAX_METADATA_TOTAL: usize = 16 * 1024;

/// Why a metadata entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The key is empty, too long, or holds characters outside `a-z 0-9 - _ .`.
    #[error("metadata key {key:?}: keys are 1 to {MAX_METADATA_KEY} bytes of a-z, 0-9, '-', '_' and '.'")]
    InvalidKey {
        /// The key, as given (cut to 80 characters).
        key: String,
    },
    /// The value is too long or holds a control character.
    #[error("metadata value of {key:?}: values are at most {MAX_METADATA_VALUE} bytes of printable text")]
    InvalidValue {
        /// The key the value was for.
        key: String,
    },
    /// Adding the entry would pass [`MAX_METADATA_ENTRIES`] or [`MAX_METADATA_TOTAL`].
    #[error("metadata full: at most {MAX_METADATA_ENTRIES} entries and {MAX_METADATA_TOTAL} bytes per call")]
    Full,
}

/// String keys and values sent with a call (an auth token, a tenant, a trace parent).
///
/// Keys are lower-case ASCII (`a-z`, `0-9`, `-`, `_`, `.`; upper case is folded), so they map
/// onto HTTP headers and AMQP header names unchanged; values are printable text. Both are
/// bounded ([`MAX_METADATA_ENTRIES`], [`MAX_METADATA_KEY`], [`MAX_METADATA_VALUE`],
/// [`MAX_METADATA_TOTAL`]) so a peer cannot make a server hold unbounded data per call.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: BTreeMap<String, String>,
    bytes: usize,
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be credentials (`authorization`): show the keys only.
        f.debug_set().entries(self.entries.keys()).finish()
    }
}

impl Metadata {
    /// No entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `key`.
    ///
    /// # Errors
    /// [`MetadataError`] when the key or value breaks the rules above, or the metadata is full.
    pub fn insert(&mut self, key: &str, value: impl Into<String>) -> Result<(), MetadataError> {
        let key = normalize_key(key)?;
        let value = value.into();
        if value.len() > MAX_METADATA_VALUE || value.chars().any(char::is_control) {
            return Err(MetadataError::InvalidValue { key });
        }
        let replaced = self.entries.get(&key).map_or(0, |old| key.len() + old.len());
        let bytes = self.bytes - replaced + key.len() + value.len();
        if bytes > MAX_METADATA_TOTAL || (replaced == 0 && self.entries.len() >= MAX_METADATA_ENTRIES) {
            return Err(MetadataError::Full);
        }
        self.bytes = bytes;
        self.entries.insert(key, value);
        Ok(())
    }

    /// The value of `key` (any case).
    pub fn get(&self, key: &str) -> Option<&str> {
        if key.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.entries.get(&key.to_ascii_lowercase()).map(String::as_str);
        }
        self.entries.get(key).map(String::as_str)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let key = key.to_ascii_lowercase();
        let value = self.entries.remove(&key)?;
        self.bytes -= key.len() + value.len();
        Some(value)
    }

    /// Every entry, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn normalize_key(key: &str) -> Result<String, MetadataError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_METADATA_KEY
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(key.to_ascii_lowercase())
    } else {
        Err(MetadataError::InvalidKey { key: key.chars().take(80).collect() })
    }
}

tokio::task_local! {
    static CURRENT: Context;
}

/// The context of one call: deadline, metadata, trace id and cancellation.
///
/// Cloning is cheap and shares the cancellation signal.
#[derive(Clone, Debug)]
pub struct Context {
    deadline: Option<Instant>,
    metadata: Arc<Metadata>,
    trace_id: Option<Arc<str>>,
    cancel: CancellationToken,
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl Context {
    /// A context with no deadline, no metadata and no trace id.
    pub fn new() -> Self {
        Context { deadline: None, metadata: Arc::default(), trace_id: None, cancel: CancellationToken::new() }
    }

    /// The context of the call running on this task, if any: what a handler's own outgoing
    /// calls inherit (see [`Context::for_outgoing_call`]).
    pub fn current() -> Option<Context> {
        CURRENT.try_with(Context::clone).ok()
    }

    /// Runs `future` with `self` as the [current](Context::current) context.
    #[doc(hidden)]
    pub async fn scope<F: std::future::Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// The context a new outgoing call starts from: inside a handler, the handler's deadline,
    /// metadata and trace id, with a cancellation signal that fires when the handler's does;
    /// elsewhere, an empty one.
    #[doc(hidden)]
    pub fn for_outgoing_call() -> Context {
        match Context::current() {
            Some(parent) => parent.child(),
            None => Context::new(),
        }
    }

    /// The instant the caller stops waiting, when there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// How long until the deadline (zero once it has passed); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Sets the deadline `timeout` from now; a deadline already earlier is kept (a nested call
    /// never outlives its parent). `Duration::MAX` means no deadline of this call's own.
    #[must_use]
    pub fn with_deadline(mut self, timeout: Duration) -> Self {
        if let Some(at) = Instant::now().checked_add(timeout) {
            self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
        }
        self
    }

    /// Sets the deadline to `at`, replacing any other (servers use it for the deadline a
    /// request carried).
    #[must_use]
    #[doc(hidden)]
    pub fn with_deadline_at(mut self, at: Option<Instant>) -> Self {
        self.deadline = at;
        self
    }

    /// The call's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The call's metadata, to change before sending.
    #[doc(hidden)]
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        Arc::make_mut(&mut self.metadata)
    }

    /// Adds one metadata entry (builder style).
    ///
    /// # Errors
    /// As [`Metadata::insert`].
    pub fn with_metadata(mut self, key: &str, value: impl Into<String>) -> Result<Self, MetadataError> {
        self.metadata_mut().insert(key, value)?;
        Ok(self)
    }

    /// Replaces the metadata.
    #[must_use]
    #[doc(hidden)]
    pub fn with_all_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Arc::new(metadata);
        self
    }

    /// The id that follows this call and every call made on its behalf, when one was set.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// Sets the trace id.
    #[must_use]
    pub fn with_trace_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.trace_id = Some(id.into());
        self
    }

    /// Whether the call was cancelled: its deadline passed or its caller went away. A
    /// synchronous handler checks it between steps of long work and returns early.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the call is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Cancels the call (servers do, when the caller goes away or the deadline passes).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A context with the same values whose cancellation signal fires when this one's does,
    /// and can also be fired alone.
    #[must_use]
    pub fn child(&self) -> Context {
        Context { cancel: self.cancel.child_token(), ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_keys_fold_case_and_refuse_what_no_header_can_carry() {
        let mut m = Metadata::new();
        m.insert("Authorization", "Bearer x").unwrap();
        assert_eq!(m.get("authorization"), Some("Bearer x"));
        assert_eq!(m.get("AUTHORIZATION"), Some("Bearer x"));
        for bad in ["", "a b", "a:b", "ключ", &"k".repeat(MAX_METADATA_KEY + 1)] {
            assert!(matches!(m.insert(bad, "v"), Err(MetadataError::InvalidKey { .. })), "key {bad:?} accepted");
        }
        assert!(matches!(m.insert("k", "a\nb"), Err(MetadataError::InvalidValue { .. })));
        assert!(matches!(m.insert("k", "v".repeat(MAX_METADATA_VALUE + 1)), Err(MetadataError::InvalidValue { .. })));
    }

    #[test]
    fn metadata_is_bounded_in_count_and_total_size() {
        let mut m = Metadata::new();
        for i in 0..MAX_METADATA_ENTRIES {
            m.insert(&format!("k{i}"), "v").unwrap();
        }
        assert_eq!(m.insert("one-more", "v"), Err(MetadataError::Full));
        // Replacing an entry is not adding one.
        m.insert("k0", "w").unwrap();
        let mut big = Metadata::new();
        for i in 0..3 {
            big.insert(&format!("k{i}"), "v".repeat(MAX_METADATA_VALUE)).unwrap();
        }
        assert_eq!(big.insert("k3", "v".repeat(MAX_METADATA_VALUE)), Err(MetadataError::Full));
        assert_eq!(big.remove("k0").map(|v| v.len()), Some(MAX_METADATA_VALUE));
        big.insert("k3", "v".repeat(MAX_METADATA_VALUE)).unwrap();
    }

    #[test]
    fn metadata_debug_never_shows_values() {
        let mut m = Metadata::new();
        m.insert("authorization", "secret-token").unwrap();
        assert!(!format!("{m:?}").contains("secret-token"), "{m:?}");
    }

    #[tokio::test]
    async fn a_nested_deadline_never_outlives_its_parent() {
        let parent = Context::new().with_deadline(Duration::from_millis(100));
        let child = parent.clone().with_deadline(Duration::from_secs(10));
        assert_eq!(child.deadline(), parent.deadline());
        let shorter = parent.clone().with_deadline(Duration::from_millis(1));
        assert!(shorter.deadline() < parent.deadline());
    }

    #[tokio::test]
    async fn outgoing_calls_inherit_the_current_handlers_context_and_its_cancellation() {
        assert!(Context::current().is_none());
        let parent = Context::new().with_deadline(Duration::from_secs(5)).with_trace_id("t-1");
        let parent = parent.with_metadata("tenant", "acme").unwrap();
        let outgoing = parent.clone().scope(async { Context::for_outgoing_call() }).await;
        assert_eq!(outgoing.trace_id(), Some("t-1"));
        assert_eq!(outgoing.metadata().get("tenant"), Some("acme"));
        assert_eq!(outgoing.deadline(), parent.deadline());
        outgoing.cancel();
        assert!(!parent.is_cancelled(), "cancelling a child call leaves its parent running");
        let second = parent.clone().scope(async { Context::for_outgoing_call() }).await;
        parent.cancel();
        assert!(second.is_cancelled(), "a cancelled handler cancels the calls it makes");
    }
}
