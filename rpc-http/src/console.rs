//! The console at `GET /`: one page, its script and style inside it, nothing fetched from
//! elsewhere. It reads `/rpc` and `/readyz`, shows every method with its docs and a form that
//! calls it, and the backends' state.

/// The page, with `title` in its heading.
pub(crate) fn page(title: &str) -> String {
    let escaped = title.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    include_str!("../assets/console.html").replace("{{title}}", &escaped)
}
