//! `keapalive-admin [--table NAME] status [--json]` and
//! `keapalive-admin [--table NAME] remove <connection_id> [--yes]`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use keapalive::ConnectionId;
use keapalive::clock::now_epoch_secs;
use keapalive::token_store::DynamoDbTokenStore;

use crate::confirm::{Decision, confirm};
use crate::status::{StatusRow, rows};
use crate::{format, status};

pub const USAGE: &str = "\
usage: keapalive-admin [--table NAME] status [--json]
       keapalive-admin [--table NAME] remove <connection_id> [--yes]

  status   every connection: kind, status, Keap account, generation, access-token expiry,
           last successful refresh, last error (never a token); --json for scripts
  remove   deletes one connection after asking (--yes skips the question; without a terminal
           --yes is required). Upserts through it then fail with NotAuthorized; a warm
           contact-upsert may keep using its cached token or key until it re-checks the
           connection (KEAPALIVE_CONNECTION_RECHECK_SECS, default 60 s; revoke the app's
           access in Keap to cut it off at once).

The table is KEAPALIVE_TABLE (or --table): the stack's TableName output. AWS access comes
from the standard environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, ...).";

pub const TABLE_ENV: &str = "KEAPALIVE_TABLE";

/// Exit codes: 0 done, 1 the command failed, 2 usage error or confirmation refused.
const FAILED: u8 = 1;
const USAGE_OR_REFUSED: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status {
        json: bool,
    },
    Remove {
        connection_id: ConnectionId,
        yes: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub table: Option<String>,
    pub command: Command,
}

/// Parses the arguments after the program name. `Err` holds the message to print (usage
/// included); `--help` is an `Err` too, printed the same way.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut table = None;
    let mut json = false;
    let mut yes = false;
    let mut positional = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err(USAGE.to_owned()),
            "--table" => {
                table = Some(
                    args.next()
                        .ok_or_else(|| format!("--table needs a value\n{USAGE}"))?,
                )
            }
            "--json" => json = true,
            "--yes" | "-y" => yes = true,
            flag if flag.starts_with('-') => {
                return Err(format!("unknown option {flag}\n{USAGE}"));
            }
            _ => positional.push(arg),
        }
    }
    let command = match positional.as_slice() {
        [command] if command == "status" && !yes => Command::Status { json },
        [command, id] if command == "remove" && !json => Command::Remove {
            connection_id: ConnectionId::parse(id).map_err(|e| format!("{e}\n{USAGE}"))?,
            yes,
        },
        _ => return Err(USAGE.to_owned()),
    };
    Ok(Args { table, command })
}

/// The table from `--table`, else [`TABLE_ENV`].
pub fn table_name(args: &Args, env_value: Option<String>) -> Result<String, String> {
    args.table
        .clone()
        .or(env_value)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            format!(
                "{TABLE_ENV} is not set: set it to the stack's TableName output, e.g.\n  \
                 export {TABLE_ENV}=$(aws cloudformation describe-stacks --stack-name keapalive-dev \
                 --query \"Stacks[0].Outputs[?OutputKey=='TableName'].OutputValue\" --output text)\n\
                 or pass --table NAME"
            )
        })
}

/// Runs one command against `store`, writing results to `out`, messages to `err`, reading a
/// confirmation from `stdin` when `interactive`.
pub async fn run(
    command: &Command,
    store: &DynamoDbTokenStore,
    table: &str,
    stdin: &mut impl BufRead,
    interactive: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> ExitCode {
    match command {
        Command::Status { json } => show_status(store, table, *json, out, err).await,
        Command::Remove { connection_id, yes } => {
            remove(store, table, connection_id, *yes, stdin, interactive, err).await
        }
    }
}

async fn show_status(
    store: &DynamoDbTokenStore,
    table: &str,
    json: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> ExitCode {
    // A scan, not the status index the refresher reads: an item with no readable status is
    // listed too (as malformed). Operators' credentials may scan; the functions' may not.
    let scan = match store.scan_connections().await {
        Ok(scan) => scan,
        Err(e) => return fail(err, &format!("cannot read table {table}: {e}")),
    };
    let rows = rows(&scan.connections, &scan.malformed);
    let now = now_epoch_secs();
    let text = if json {
        format!("{}\n", format::json(&rows, now))
    } else {
        format::table(&rows, now)
    };
    if out.write_all(text.as_bytes()).is_err() {
        return ExitCode::from(FAILED);
    }
    ExitCode::SUCCESS
}

async fn remove(
    store: &DynamoDbTokenStore,
    table: &str,
    id: &ConnectionId,
    yes: bool,
    stdin: &mut impl BufRead,
    interactive: bool,
    err: &mut impl Write,
) -> ExitCode {
    let connection = match store.get(id).await {
        Ok(Some(connection)) => connection,
        Ok(None) => return fail(err, &format!("no connection `{id}` in table {table}")),
        Err(e) => return fail(err, &format!("cannot read table {table}: {e}")),
    };
    let row = status::StatusRow::from_connection(&connection);
    let _ = writeln!(err, "{}", describe(&row, table));
    let question = format!(
        "Delete connection `{id}`? Upserts through it will fail with NotAuthorized until it is \
         authorized again."
    );
    match confirm(&question, yes, interactive, stdin, err) {
        Decision::Proceed => {}
        Decision::Declined => {
            let _ = writeln!(err, "not deleted");
            return ExitCode::from(USAGE_OR_REFUSED);
        }
        Decision::CannotAsk => {
            let _ = writeln!(
                err,
                "refusing to delete `{id}` without confirmation: stdin is not a terminal; \
                 pass --yes to delete anyway"
            );
            return ExitCode::from(USAGE_OR_REFUSED);
        }
    }
    // Its open authorize links first (as the operator function's remove_connection does): one
    // followed after the removal would bring the connection back.
    match store.retire_pending_authorizations(id).await {
        Ok(0) => {}
        Ok(retired) => {
            let _ = writeln!(
                err,
                "retired {retired} pending authorization link(s) of `{id}`"
            );
        }
        Err(e) => {
            return fail(
                err,
                &format!("cannot retire the authorize links of `{id}`: {e}"),
            );
        }
    }
    match store.delete_connection(id).await {
        Ok(true) => {
            let _ = writeln!(err, "deleted connection `{id}`");
            if let Some(secret) = &connection.key_secret_id {
                let _ = writeln!(
                    err,
                    "its key is still in Secrets Manager ({secret}): delete it there if it \
                     is no longer needed, and revoke it in Keap"
                );
            }
            ExitCode::SUCCESS
        }
        // Someone else deleted it between the read and now: the outcome the operator wanted.
        Ok(false) => {
            let _ = writeln!(err, "connection `{id}` was already gone");
            ExitCode::SUCCESS
        }
        Err(e) => fail(err, &format!("cannot delete `{id}` from {table}: {e}")),
    }
}

fn describe(row: &StatusRow, table: &str) -> String {
    format!(
        "connection `{}` in {table}: {}, {}, Keap account {}, generation {}",
        row.connection_id,
        row.kind,
        row.status,
        row.keap_account.as_deref().unwrap_or("unknown"),
        row.generation
    )
}

fn fail(err: &mut impl Write, message: &str) -> ExitCode {
    let _ = writeln!(err, "keapalive-admin: {message}");
    ExitCode::from(FAILED)
}

/// The whole program, given the process's arguments (without the program name).
pub async fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let mut stderr = std::io::stderr();
    let args = match parse(args) {
        Ok(args) => args,
        Err(message) => {
            let _ = writeln!(stderr, "{message}");
            return ExitCode::from(USAGE_OR_REFUSED);
        }
    };
    let table = match table_name(&args, std::env::var(TABLE_ENV).ok()) {
        Ok(table) => table,
        Err(message) => return fail(&mut stderr, &message),
    };
    let aws = keapalive::wiring::load_aws().await;
    let store = DynamoDbTokenStore::new(aws_sdk_dynamodb::Client::new(&aws), &table);
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    run(
        &args.command,
        &store,
        &table,
        &mut stdin.lock(),
        interactive,
        &mut std::io::stdout(),
        &mut stderr,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_both_commands() {
        assert_eq!(
            args(&["status"]).unwrap().command,
            Command::Status { json: false }
        );
        let parsed = args(&["--table", "t1", "status", "--json"]).unwrap();
        assert_eq!(parsed.table.as_deref(), Some("t1"));
        assert_eq!(parsed.command, Command::Status { json: true });
        assert_eq!(
            args(&["remove", "eu", "--yes"]).unwrap().command,
            Command::Remove {
                connection_id: ConnectionId::parse("eu").unwrap(),
                yes: true
            }
        );
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            &[][..],
            &["remove"],
            &["remove", "bad id"],
            &["status", "--yes"],
            &["remove", "a", "--json"],
            &["status", "--force"],
            &["--table"],
            &["frobnicate"],
        ] {
            assert!(args(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn table_comes_from_the_flag_then_the_environment() {
        let flagged = args(&["--table", "from-flag", "status"]).unwrap();
        assert_eq!(
            table_name(&flagged, Some("from-env".into())).unwrap(),
            "from-flag"
        );
        let plain = args(&["status"]).unwrap();
        assert_eq!(
            table_name(&plain, Some("from-env".into())).unwrap(),
            "from-env"
        );
        let missing = table_name(&plain, None).unwrap_err();
        assert!(missing.contains(TABLE_ENV), "{missing}");
    }
}
