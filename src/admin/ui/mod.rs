//! The operator console: one page, one script, one style sheet, embedded in
//! the binary (`include_str!`), with no third-party code and no build step.
//!
//! - `index.html`: the page's skeleton (panels, buttons, the token box);
//! - `app.js`: reads `/events` with `fetch` (a stream of server-sent events)
//!   and draws the tree, the flow charts and the panels with DOM calls and
//!   `textContent` only; control buttons call the JSON routes with
//!   `Authorization: Bearer <token>`, the token held in a variable (no
//!   cookie, no storage, so no CSRF);
//! - `app.css`: the looks.
//!
//! Every answer carries a Content-Security-Policy that allows only these
//! files (no inline script or style, no other origin, no framing).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The policy of every console file.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /ui/app.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ` onclick=`, ` onload =`... anywhere in the page.
    fn has_event_attribute(html: &str) -> bool {
        html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].trim_start().starts_with('=')
        })
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let lower = PAGE.to_lowercase();
        assert!(!lower.contains("<style"), "inline style element");
        assert!(!lower.contains("style="), "inline style attribute");
        assert!(
            !has_event_attribute(&lower),
            "inline event handler (on...=)"
        );
        assert!(!lower.contains("javascript:"));
        // The one script element loads the file.
        assert_eq!(lower.matches("<script").count(), 1);
        assert!(lower.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(has_event_attribute(r#"<b onclick="x()">"#));
        assert!(!has_event_attribute("<p>pending only</p>"));
    }

    #[test]
    fn the_script_never_writes_html() {
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "localStorage",
            "sessionStorage",
            "document.cookie",
        ] {
            assert!(!SCRIPT.contains(forbidden), "app.js uses {forbidden}");
        }
    }
}
