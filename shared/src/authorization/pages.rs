//! The browser pages of the callback: small, self-contained HTML (no scripts, no external
//! resources), cached nowhere, never framed, never leaking the callback URL (which carries the
//! code) through a `Referer`.
//!
//! Every value interpolated into a page goes through [`escape`]. Pages only ever show values
//! keapalive validated or Keap's own account names, never anything from the query string.

use aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::header::{self, HeaderMap, HeaderValue};

use crate::connection_id::ConnectionId;

pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;\
max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5;color:#1f2328}\
h1{font-size:1.4rem}code{background:#f0f1f3;padding:0 .3rem;border-radius:4px}\
.status{color:#6b7280;font-size:.85rem}";

/// A rendered page: its status and HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    pub status: u16,
    title: &'static str,
    /// Paragraph bodies, already escaped.
    paragraphs: Vec<String>,
    allow: Option<&'static str>,
}

impl Page {
    fn new(status: u16, title: &'static str) -> Self {
        Self {
            status,
            title,
            paragraphs: Vec::new(),
            allow: None,
        }
    }

    fn paragraph(mut self, html: String) -> Self {
        self.paragraphs.push(html);
        self
    }

    pub fn html(&self) -> String {
        let mut body = String::new();
        for paragraph in &self.paragraphs {
            body.push_str("<p>");
            body.push_str(paragraph);
            body.push_str("</p>");
        }
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta name=\"robots\" content=\"noindex\">\
             <title>{title} · keapalive</title><style>{STYLE}</style></head>\
             <body><h1>{title}</h1>{body}<p class=\"status\">keapalive · HTTP {status}</p></body></html>",
            title = escape(self.title),
            status = self.status,
        )
    }

    pub fn into_response(self) -> ApiGatewayV2httpResponse {
        let mut headers = HeaderMap::new();
        let fixed = [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ];
        for (name, value) in fixed {
            headers.insert(name, HeaderValue::from_static(value));
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        let mut response = ApiGatewayV2httpResponse::default();
        response.status_code = i64::from(self.status);
        response.body = Some(Body::Text(self.html()));
        response.headers = headers;
        response
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn code(text: &str) -> String {
    format!("<code>{}</code>", escape(text))
}

/// "connection `x`" when the connection is known, else "the connection".
fn connection_phrase(connection_id: Option<&ConnectionId>) -> String {
    match connection_id {
        Some(id) => format!("connection {}", code(id.as_str())),
        None => "the connection".to_owned(),
    }
}

/// The operator's start command for this connection, as `<code>`.
fn start_command(connection_id: Option<&ConnectionId>, replace_account: bool) -> String {
    let id = connection_id.map_or("default", ConnectionId::as_str);
    let replace = if replace_account {
        ", \"replace_account\": true"
    } else {
        ""
    };
    code(&format!(
        "{{\"start_authorization\": {{\"connection_id\": \"{id}\"{replace}}}}}"
    ))
}

/// How an operator starts over: the same command that printed the first link.
fn start_again(connection_id: Option<&ConnectionId>) -> String {
    format!(
        "To start again, the operator invokes the operator function with {} and opens the \
         new link it prints (each link works once, for 10 minutes).",
        start_command(connection_id, false)
    )
}

const NOTHING_STORED: &str = "Nothing was stored.";

pub fn authorized(connection_id: &ConnectionId, keap_app: Option<&str>) -> Page {
    let app = match keap_app {
        Some(app) => format!("the Keap app {}", code(app)),
        None => "your Keap app".to_owned(),
    };
    Page::new(200, "Keap is connected")
        .paragraph(format!(
            "Connection {} is now authorized for {app}.",
            code(connection_id.as_str())
        ))
        .paragraph(
            "keapalive keeps this authorization alive from now on. You can close this window."
                .to_owned(),
        )
}

pub fn access_denied(connection_id: Option<&ConnectionId>) -> Page {
    Page::new(403, "Access was not granted")
        .paragraph(format!(
            "Keap reports that access was denied, so {} was not authorized. {NOTHING_STORED}",
            connection_phrase(connection_id)
        ))
        .paragraph(format!(
            "{} On Keap's page, sign in as a user who may grant API access and choose Allow.",
            start_again(connection_id)
        ))
}

pub(crate) fn keap_error(connection_id: Option<&ConnectionId>) -> Page {
    Page::new(400, "Keap reported an error")
        .paragraph(format!(
            "Keap sent the browser back with an error instead of an authorization. {NOTHING_STORED}"
        ))
        .paragraph(format!(
            "{} If this keeps happening, check the Keap app's client id and redirect URI.",
            start_again(connection_id)
        ))
}

pub(crate) fn bad_request() -> Page {
    Page::new(400, "Not an authorization callback").paragraph(format!(
        "This request is not a valid authorization callback. {NOTHING_STORED}"
    ))
}

pub fn missing_state() -> Page {
    Page::new(400, "No authorization was started")
        .paragraph(format!(
            "This page only finishes an authorization that an operator started, and this request \
             does not belong to one. {NOTHING_STORED}"
        ))
        .paragraph(start_again(None))
}

pub fn unknown_state() -> Page {
    Page::new(400, "Link unknown or already used")
        .paragraph(format!(
            "This authorization link is unknown or was already used. {NOTHING_STORED}"
        ))
        .paragraph(start_again(None))
}

pub fn expired_state() -> Page {
    Page::new(400, "Link expired")
        .paragraph(format!(
            "This authorization link expired: links are valid for 10 minutes. {NOTHING_STORED}"
        ))
        .paragraph(start_again(None))
}

pub(crate) fn missing_code() -> Page {
    Page::new(400, "No authorization code")
        .paragraph(format!(
            "Keap did not send an authorization code. {NOTHING_STORED}"
        ))
        .paragraph(start_again(None))
}

pub(crate) fn code_rejected(connection_id: Option<&ConnectionId>) -> Page {
    Page::new(400, "Keap refused the authorization")
        .paragraph(format!(
            "Keap refused to exchange the authorization code for {}: it was already used, it \
             expired, or the redirect URI does not match the Keap app's. {NOTHING_STORED} This \
             link is used up.",
            connection_phrase(connection_id)
        ))
        .paragraph(start_again(connection_id))
}

pub fn keap_unavailable(connection_id: Option<&ConnectionId>) -> Page {
    Page::new(502, "Keap did not answer")
        .paragraph(format!(
            "Keap's token service did not answer properly, so {} could not be authorized. \
             {NOTHING_STORED} This link is used up.",
            connection_phrase(connection_id)
        ))
        .paragraph(format!(
            "Wait a minute first. {}",
            start_again(connection_id)
        ))
}

pub fn account_mismatch(
    connection_id: Option<&ConnectionId>,
    existing_app: &str,
    offered_app: &str,
) -> Page {
    Page::new(409, "A different Keap account")
        .paragraph(format!(
            "The Keap account of {} is the app {}, but this authorization is for {}. Nothing \
             was changed.",
            connection_phrase(connection_id),
            code(existing_app),
            code(offered_app)
        ))
        .paragraph(format!(
            "To keep {}, start again and sign in to that account in Keap. To move the connection \
             to {} instead, the operator starts again with {}.",
            code(existing_app),
            code(offered_app),
            start_command(connection_id, true)
        ))
}

pub fn configuration(connection_id: Option<&ConnectionId>) -> Page {
    Page::new(500, "Configuration problem")
        .paragraph(format!(
            "keapalive could not finish authorizing {} because of a configuration problem. \
             {NOTHING_STORED}",
            connection_phrase(connection_id)
        ))
        .paragraph(
            "The operator finds the reason in the oauth-callback function's logs; after fixing \
             it, start a new authorization."
                .to_owned(),
        )
}

pub(crate) fn temporarily_unavailable(connection_id: Option<&ConnectionId>) -> Page {
    Page::new(503, "Temporarily unavailable")
        .paragraph(format!(
            "keapalive's storage did not answer, so {} could not be authorized.",
            connection_phrase(connection_id)
        ))
        .paragraph(format!(
            "Wait a minute first. {}",
            start_again(connection_id)
        ))
}

pub(crate) fn no_time_left(connection_id: Option<&ConnectionId>) -> Page {
    Page::new(503, "Out of time")
        .paragraph(format!(
            "keapalive ran out of time before it could safely finish authorizing {}, so it did \
             not ask Keap for the authorization. {NOTHING_STORED} This link is used up.",
            connection_phrase(connection_id)
        ))
        .paragraph(format!(
            "Ask the operator for a new link. {}",
            start_again(connection_id)
        ))
}

pub(crate) fn superseded(connection_id: Option<&ConnectionId>) -> Page {
    Page::new(409, "A newer authorization won")
        .paragraph(format!(
            "Another authorization of {} finished after this one began, and it stays: Keap \
             keeps only the latest authorization of the same user. This one was not kept.",
            connection_phrase(connection_id)
        ))
        .paragraph(
            "Nothing to do if the other authorization was yours; otherwise the operator checks \
             the connection's status."
                .to_owned(),
        )
}

pub(crate) fn removed(connection_id: Option<&ConnectionId>) -> Page {
    Page::new(410, "Connection removed")
        .paragraph(format!(
            "{} was removed after this link was started, so the link no longer works. \
             {NOTHING_STORED}",
            capitalized(&connection_phrase(connection_id))
        ))
        .paragraph(format!(
            "To connect it again, {}",
            lowercase_first(&start_again(connection_id))
        ))
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub(crate) fn not_found() -> Page {
    Page::new(404, "Not found").paragraph("There is nothing here.".to_owned())
}

pub(crate) fn method_not_allowed() -> Page {
    let mut page = Page::new(405, "Method not allowed")
        .paragraph("The authorization callback only answers GET.".to_owned());
    page.allow = Some("GET");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_interpolated() {
        let page = account_mismatch(
            Some(&ConnectionId::default()),
            "<script>alert(1)</script>",
            "a\"b'c&d",
        );
        let html = page.html();
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("a&quot;b&#39;c&amp;d"));
    }

    #[test]
    fn every_page_carries_the_security_headers() {
        let response = method_not_allowed().into_response();
        assert_eq!(response.status_code, 405);
        let header = |name: &str| {
            response
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("cache-control"), "no-store");
        assert_eq!(header("content-type"), "text/html; charset=utf-8");
        assert_eq!(header("content-security-policy"), CONTENT_SECURITY_POLICY);
        assert_eq!(header("referrer-policy"), "no-referrer");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("allow"), "GET");
    }

    #[test]
    fn success_names_connection_and_app() {
        let html = authorized(
            &ConnectionId::parse("sales").unwrap(),
            Some("ab123.infusionsoft.com"),
        )
        .html();
        assert!(html.contains("<code>sales</code>"));
        assert!(html.contains("<code>ab123.infusionsoft.com</code>"));
    }
}
