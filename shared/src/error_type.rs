//! The `errorType` vocabulary: every Lambda error keapalive's functions return names one of
//! these (docs/design.md, "errorType vocabulary"). Callers branch on the string, so it is a
//! contract: the `errorType` table of docs/calling.md lists the five a caller of contact-upsert sees,
//! the one of docs/keap-proxy.md the five a caller of keap-proxy sees, and tests below pin them
//! against those tables.

/// What kind of failure a Lambda error is, as its `errorType` string says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Bad input; retrying it unchanged fails the same way.
    Validation,
    /// The connection is missing or needs re-authorization (a human must act), or the
    /// operator's command names something the function may not use.
    NotAuthorized,
    /// Keap refused the request; its message is passed on.
    KeapRejected,
    /// Keap is throttling; safe to retry later.
    RateLimited,
    /// Keap or AWS did not answer, or time ran out; safe to retry.
    Unavailable,
    /// Operator commands only: the deployment is misconfigured (secret, table, IAM policy).
    Configuration,
    /// A response that could not be encoded: a bug, never the caller's fault.
    Internal,
    /// keap-proxy only: Keap's answer does not fit in Lambda's 6 MB response; ask for less
    /// (`limit`/`offset`, `page_size`).
    ResponseTooLarge,
}

impl ErrorType {
    /// The five a caller of contact-upsert (and of the refresher) can receive.
    pub const CALLER_FACING: [ErrorType; 5] = [
        Self::Validation,
        Self::NotAuthorized,
        Self::KeapRejected,
        Self::RateLimited,
        Self::Unavailable,
    ];

    /// What a caller of keap-proxy can receive (the `errorType` table of docs/keap-proxy.md):
    /// Keap's refusals (4xx) are answers there, not errors.
    pub const PROXY_FACING: [ErrorType; 5] = [
        Self::Validation,
        Self::NotAuthorized,
        Self::RateLimited,
        Self::Unavailable,
        Self::ResponseTooLarge,
    ];

    /// What a caller of access-token can receive (the `errorType` table of
    /// docs/access-token.md).
    pub const ACCESS_TOKEN_FACING: [ErrorType; 4] = [
        Self::Validation,
        Self::NotAuthorized,
        Self::RateLimited,
        Self::Unavailable,
    ];

    /// The Lambda `errorType` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validation => "ValidationError",
            Self::NotAuthorized => "NotAuthorized",
            Self::KeapRejected => "KeapRejected",
            Self::RateLimited => "RateLimited",
            Self::Unavailable => "Unavailable",
            Self::Configuration => "ConfigurationError",
            Self::Internal => "InternalError",
            Self::ResponseTooLarge => "ResponseTooLarge",
        }
    }

    /// A Lambda error of this type.
    pub fn diagnostic(self, message: impl Into<String>) -> lambda_runtime::Diagnostic {
        lambda_runtime::Diagnostic {
            error_type: self.as_str().to_owned(),
            error_message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    const TABLE_HEADER: &str = "| `errorType` |";

    /// Pages of functions with their own `errorType` table, checked against their own lists.
    const OWN_TABLES: [&str; 2] = ["keap-proxy.md", "access-token.md"];

    /// README.md and docs/*.md (but [`OWN_TABLES`]), wherever the table is.
    fn contract_documents() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut documents = vec![root.join("README.md")];
        if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
            let mut pages: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "md"))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|name| OWN_TABLES.iter().any(|own| name == *own))
                })
                .collect();
            pages.sort();
            documents.extend(pages);
        }
        documents
    }

    /// The first column of the first table that starts with [`TABLE_HEADER`], backticks
    /// removed, and which file it came from.
    fn documented_error_types() -> (PathBuf, Vec<String>) {
        for path in contract_documents() {
            if let Some(rows) = table_in(&path) {
                return (path, rows);
            }
        }
        panic!("no document has an `errorType` table (a line starting with {TABLE_HEADER:?})");
    }

    fn table_in(path: &Path) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut lines = text.lines().skip_while(|l| !l.starts_with(TABLE_HEADER));
        lines.next()?;
        Some(
            lines
                .skip(1) // the |---| separator
                .take_while(|l| l.starts_with('|'))
                .filter_map(|row| row.split('|').nth(1))
                .map(|cell| cell.trim().trim_matches('`').to_owned())
                .collect(),
        )
    }

    #[test]
    fn the_proxy_page_lists_exactly_the_proxy_facing_error_types() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/keap-proxy.md");
        let mut documented = table_in(&path).expect("docs/keap-proxy.md has an `errorType` table");
        documented.sort();
        let mut ours: Vec<String> = ErrorType::PROXY_FACING
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        ours.sort();
        assert_eq!(documented, ours);
    }

    #[test]
    fn the_access_token_page_lists_exactly_its_error_types() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/access-token.md");
        let mut documented =
            table_in(&path).expect("docs/access-token.md has an `errorType` table");
        documented.sort();
        let mut ours: Vec<String> = ErrorType::ACCESS_TOKEN_FACING
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        ours.sort();
        assert_eq!(documented, ours);
    }

    #[test]
    fn the_readme_table_lists_exactly_the_caller_facing_error_types() {
        let (path, documented) = documented_error_types();
        let mut documented_sorted = documented.clone();
        documented_sorted.sort();
        let mut ours: Vec<String> = ErrorType::CALLER_FACING
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        ours.sort();
        assert_eq!(
            documented_sorted,
            ours,
            "{} documents {documented:?}",
            path.display()
        );
    }

    #[test]
    fn strings_are_distinct_and_the_diagnostic_carries_them() {
        let all = [
            ErrorType::Validation,
            ErrorType::NotAuthorized,
            ErrorType::KeapRejected,
            ErrorType::RateLimited,
            ErrorType::Unavailable,
            ErrorType::Configuration,
            ErrorType::Internal,
            ErrorType::ResponseTooLarge,
        ];
        let mut strings: Vec<&str> = all.iter().map(|t| t.as_str()).collect();
        strings.sort();
        strings.dedup();
        assert_eq!(strings.len(), all.len());
        let diagnostic = ErrorType::RateLimited.diagnostic("later");
        assert_eq!(diagnostic.error_type, "RateLimited");
        assert_eq!(diagnostic.error_message, "later");
    }
}
