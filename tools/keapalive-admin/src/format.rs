//! Rendering [`StatusRow`]s: a table for people (times relative to `now`), JSON for machines
//! (absolute epoch seconds plus the relative numbers, so a script need not know the clock).

use serde_json::{Value, json};

use crate::status::StatusRow;

const HEADERS: [&str; 8] = [
    "CONNECTION",
    "KIND",
    "STATUS",
    "KEAP ACCOUNT",
    "GEN",
    "ACCESS TOKEN EXPIRES",
    "LAST REFRESH",
    "LAST ERROR",
];

/// Long errors would push the table off any terminal; `--json` has them whole.
const MAX_ERROR_CHARS: usize = 60;
const NONE: &str = "-";

/// The human table, one line per connection, columns padded to their widest cell. With no
/// connections, a line that says so and what to do.
pub fn table(rows: &[StatusRow], now: i64) -> String {
    if rows.is_empty() {
        return "no connections yet: start an authorization (invoke the operator function with \
                {\"start_authorization\":{\"connection_id\":\"default\"}}) and open the link\n"
            .to_owned();
    }
    let mut lines: Vec<[String; 8]> = vec![HEADERS.map(str::to_owned)];
    lines.extend(rows.iter().map(|row| cells(row, now)));
    let mut widths = [0usize; 8];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, (cell, width)) in line.iter().zip(widths).enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    let attention = rows.iter().filter(|r| r.needs_reauthorization()).count();
    if attention > 0 {
        out.push_str(&format!(
            "\n{attention} connection(s) need re-authorization: invoke the operator function with \
             {{\"start_authorization\":{{\"connection_id\":\"<id>\"}}}} and open the link\n"
        ));
    }
    out
}

fn cells(row: &StatusRow, now: i64) -> [String; 8] {
    [
        row.connection_id.clone(),
        row.kind.to_owned(),
        row.status.to_owned(),
        row.keap_account.clone().unwrap_or_else(|| NONE.to_owned()),
        row.generation.to_string(),
        expiry(row, now),
        last_refresh(row, now),
        row.last_error
            .as_deref()
            .map(truncate_error)
            .unwrap_or_else(|| NONE.to_owned()),
    ]
}

fn expiry(row: &StatusRow, now: i64) -> String {
    match row.access_expires_at {
        None if row.kind == "service_account_key" => "never (key)".to_owned(),
        None => NONE.to_owned(),
        Some(at) if at <= now => format!("expired {}", relative(at - now)),
        Some(at) => relative(at - now),
    }
}

fn last_refresh(row: &StatusRow, now: i64) -> String {
    match (row.refreshed_at, row.authorized_at) {
        (Some(at), _) => relative(at - now),
        (None, Some(at)) => format!("never (authorized {})", relative(at - now)),
        (None, None) => NONE.to_owned(),
    }
}

fn truncate_error(error: &str) -> String {
    // One line: a multi-line error would break the table.
    let flat: String = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= MAX_ERROR_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_ERROR_CHARS - 3).collect();
    cut.push_str("...");
    cut
}

/// `offset_secs` from now as "in 23h 10m" (future) or "23h 10m ago" (past): the two largest
/// units, which is as precise as a person reading a status table wants.
pub fn relative(offset_secs: i64) -> String {
    if offset_secs == 0 {
        return "just now".to_owned();
    }
    let span = duration(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `90061` → `1d 1h`; `4210` → `1h 10m`; `75` → `1m 15s`; `9` → `9s`.
pub fn duration(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(first) = units.iter().position(|(size, _)| secs >= *size) else {
        return "0s".to_owned();
    };
    let (size, name) = units[first];
    let major = secs / size;
    let rest = secs % size;
    match units.get(first + 1) {
        Some((minor_size, minor_name)) if rest / minor_size > 0 => {
            format!("{major}{name} {}{minor_name}", rest / minor_size)
        }
        _ => format!("{major}{name}"),
    }
}

/// `{"now": .., "connections": [..]}`: each row's fields plus `access_expires_in_secs` and
/// `seconds_since_refresh`, relative to `now`.
pub fn json(rows: &[StatusRow], now: i64) -> Value {
    let connections: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut value = serde_json::to_value(row).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert(
                    "access_expires_in_secs".to_owned(),
                    json!(row.access_expires_at.map(|at| at - now)),
                );
                map.insert(
                    "seconds_since_refresh".to_owned(),
                    json!(row.refreshed_at.map(|at| now - at)),
                );
            }
            value
        })
        .collect();
    json!({ "now": now, "connections": connections })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn row(id: &str) -> StatusRow {
        StatusRow {
            connection_id: id.to_owned(),
            kind: "oauth",
            status: "active",
            keap_account: Some("ab123.infusionsoft.com".to_owned()),
            generation: 7,
            incarnation: None,
            access_expires_at: Some(NOW + 23 * 3600 + 10 * 60 + 5),
            refreshed_at: Some(NOW - 50 * 60),
            authorized_at: Some(NOW - 3 * 86_400),
            last_error: None,
            lease_until: None,
        }
    }

    #[test]
    fn durations_show_the_two_largest_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(9), "9s");
        assert_eq!(duration(75), "1m 15s");
        assert_eq!(duration(4_210), "1h 10m");
        assert_eq!(duration(3_600), "1h");
        assert_eq!(duration(90_061), "1d 1h");
        assert_eq!(relative(83_405), "in 23h 10m");
        assert_eq!(relative(-3_000), "50m ago");
        assert_eq!(relative(0), "just now");
    }

    #[test]
    fn table_has_one_aligned_line_per_connection() {
        let mut dead = row("eu");
        dead.status = "needs_reauthorization";
        dead.access_expires_at = Some(NOW - 7_200);
        dead.refreshed_at = None;
        dead.last_error = Some("refresh token rejected (invalid_grant)".to_owned());
        let mut key = row("reports");
        key.kind = "service_account_key";
        key.access_expires_at = None;
        key.keap_account = None;
        key.refreshed_at = None;
        key.authorized_at = None;

        let out = table(&[row("default"), dead, key], NOW);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("CONNECTION  KIND"), "{out}");
        assert!(
            lines[1].contains("in 23h 10m") && lines[1].contains("50m ago"),
            "{out}"
        );
        assert!(lines[2].contains("expired 2h ago"), "{out}");
        assert!(lines[2].contains("never (authorized 3d ago)"), "{out}");
        assert!(lines[2].contains("refresh token rejected"), "{out}");
        assert!(lines[3].contains("never (key)"), "{out}");
        // Columns line up: every row's STATUS starts where the header's does.
        let status_at = lines[0].find("STATUS").unwrap();
        for line in &lines[1..4] {
            assert!(
                line[status_at..].starts_with("active") || line[status_at..].starts_with("needs_")
            );
        }
        assert!(
            out.contains("1 connection(s) need re-authorization"),
            "{out}"
        );
    }

    #[test]
    fn long_and_multi_line_errors_stay_on_one_short_line() {
        let mut noisy = row("default");
        noisy.last_error = Some(format!("first line\nsecond {}", "x".repeat(200)));
        let out = table(&[noisy], NOW);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.lines().nth(1).unwrap().ends_with("..."), "{out}");
    }

    #[test]
    fn empty_table_says_what_to_do() {
        assert!(table(&[], NOW).contains("start_authorization"));
    }

    #[test]
    fn json_has_absolute_and_relative_times() {
        let value = json(&[row("default")], NOW);
        let connection = &value["connections"][0];
        assert_eq!(connection["connection_id"], "default");
        assert_eq!(connection["generation"], 7);
        assert!(
            connection.get("incarnation").is_some(),
            "the incarnation is part of the JSON status"
        );
        assert_eq!(connection["access_expires_in_secs"], 83_405);
        assert_eq!(connection["seconds_since_refresh"], 3_000);
        assert_eq!(connection["keap_account"], "ab123.infusionsoft.com");
        assert_eq!(value["now"], NOW);
    }
}
