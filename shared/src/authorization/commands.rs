//! The operator commands (direct invocations, IAM-protected), parsed by hand rather than by
//! serde so that no error message ever quotes a value the operator sent (a key pasted into the
//! wrong field must not come back in an error, or land in a log).

use serde_json::{Map, Value};

use super::error::CommandError;
use crate::connection_id::ConnectionId;

pub(crate) const ACCEPTED_COMMANDS: &str = "accepted commands: \
{\"start_authorization\": {\"connection_id\": \"default\", \"replace_account\": false}}, \
{\"register_service_account_key\": {\"connection_id\": \"default\", \"secret_id\": \"...\"}}, \
{\"remove_connection\": {\"connection_id\": \"...\"}}, \
{\"subscribe_hooks\": {\"connection_id\": \"default\", \"event_keys\": [\"contact.add\"]}}, \
{\"list_hooks\": {\"connection_id\": \"default\"}}, \
{\"unsubscribe_hooks\": {\"connection_id\": \"default\", \"event_keys\": [\"contact.add\"]}}";

/// Secrets Manager ids (names or ARNs) are at most 2048 characters.
const MAX_SECRET_ID_CHARS: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    StartAuthorization(StartAuthorization),
    RegisterServiceAccountKey(RegisterServiceAccountKey),
    RemoveConnection(RemoveConnection),
    SubscribeHooks(HookCommand),
    ListHooks(ConnectionId),
    UnsubscribeHooks(HookCommand),
}

/// `subscribe_hooks` / `unsubscribe_hooks`: a connection and Keap event keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HookCommand {
    pub connection_id: ConnectionId,
    pub event_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartAuthorization {
    pub connection_id: ConnectionId,
    /// Allow the connection to move to a different Keap account.
    pub replace_account: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegisterServiceAccountKey {
    pub connection_id: ConnectionId,
    /// Secrets Manager id (name or ARN) whose secret string is the key.
    pub secret_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoveConnection {
    pub connection_id: ConnectionId,
}

impl Command {
    pub fn parse(event: &Value) -> Result<Self, CommandError> {
        let unknown = || CommandError::Validation(format!("unknown command; {ACCEPTED_COMMANDS}"));
        let Some(object) = event.as_object() else {
            return Err(unknown());
        };
        let mut entries = object.iter();
        let (Some((name, body)), None) = (entries.next(), entries.next()) else {
            return Err(unknown());
        };
        match name.as_str() {
            "start_authorization" => {
                let fields = Fields::new(
                    "start_authorization",
                    body,
                    &["connection_id", "replace_account"],
                )?;
                Ok(Self::StartAuthorization(StartAuthorization {
                    connection_id: fields.connection_id(Some(ConnectionId::default()))?,
                    replace_account: fields.boolean("replace_account")?.unwrap_or(false),
                }))
            }
            "register_service_account_key" => {
                let fields = Fields::new(
                    "register_service_account_key",
                    body,
                    &["connection_id", "secret_id"],
                )?;
                Ok(Self::RegisterServiceAccountKey(RegisterServiceAccountKey {
                    connection_id: fields.connection_id(Some(ConnectionId::default()))?,
                    secret_id: fields.secret_id()?,
                }))
            }
            // Deleting is never implied: the connection must be named.
            "remove_connection" => {
                let fields = Fields::new("remove_connection", body, &["connection_id"])?;
                Ok(Self::RemoveConnection(RemoveConnection {
                    connection_id: fields.connection_id(None)?,
                }))
            }
            "subscribe_hooks" | "unsubscribe_hooks" => {
                let command = if name == "subscribe_hooks" {
                    "subscribe_hooks"
                } else {
                    "unsubscribe_hooks"
                };
                let fields = Fields::new(command, body, &["connection_id", "event_keys"])?;
                let hooks = HookCommand {
                    connection_id: fields.connection_id(Some(ConnectionId::default()))?,
                    event_keys: fields.strings("event_keys")?,
                };
                Ok(if command == "subscribe_hooks" {
                    Self::SubscribeHooks(hooks)
                } else {
                    Self::UnsubscribeHooks(hooks)
                })
            }
            "list_hooks" => {
                let fields = Fields::new("list_hooks", body, &["connection_id"])?;
                Ok(Self::ListHooks(
                    fields.connection_id(Some(ConnectionId::default()))?,
                ))
            }
            _ => Err(unknown()),
        }
    }
}

struct Fields<'a> {
    command: &'static str,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Fields<'a> {
    fn new(
        command: &'static str,
        body: &'a Value,
        accepted: &[&str],
    ) -> Result<Self, CommandError> {
        let map = match body {
            Value::Object(map) => Some(map),
            Value::Null => None,
            _ => {
                return Err(CommandError::Validation(format!(
                    "{command} takes an object with {}",
                    accepted.join(", ")
                )));
            }
        };
        if let Some(map) = map
            && map.keys().any(|key| !accepted.contains(&key.as_str()))
        {
            return Err(CommandError::Validation(format!(
                "{command} accepts only these fields: {}",
                accepted.join(", ")
            )));
        }
        Ok(Self { command, map })
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map?.get(name).filter(|value| !value.is_null())
    }

    fn invalid(&self, name: &str, expected: &str) -> CommandError {
        CommandError::Validation(format!("{}.{name} must be {expected}", self.command))
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, CommandError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(name, "a string")),
        }
    }

    /// A non-empty list of strings (not quoted back: the operator may have pasted anything).
    fn strings(&self, name: &str) -> Result<Vec<String>, CommandError> {
        let Some(Value::Array(items)) = self.get(name) else {
            return Err(self.invalid(name, "a list of Keap event keys, e.g. [\"contact.add\"]"));
        };
        let strings: Option<Vec<String>> = items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect();
        match strings {
            Some(strings) if !strings.is_empty() && strings.len() <= 50 => Ok(strings),
            _ => Err(self.invalid(name, "a list of 1 to 50 event keys (strings)")),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, CommandError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.invalid(name, "true or false")),
        }
    }

    fn connection_id(&self, default: Option<ConnectionId>) -> Result<ConnectionId, CommandError> {
        match (self.string("connection_id")?, default) {
            (Some(raw), _) => ConnectionId::parse(raw)
                .map_err(|e| CommandError::Validation(format!("{}.{e}", self.command))),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(CommandError::Validation(format!(
                "{}.connection_id is required",
                self.command
            ))),
        }
    }

    fn secret_id(&self) -> Result<String, CommandError> {
        let raw = self.string("secret_id")?.ok_or_else(|| {
            self.invalid("secret_id", "the Secrets Manager name or ARN of the key")
        })?;
        let valid = !raw.is_empty()
            && raw.chars().count() <= MAX_SECRET_ID_CHARS
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            return Err(self.invalid(
                "secret_id",
                "a Secrets Manager name or ARN (1-2048 characters, no spaces)",
            ));
        }
        Ok(raw.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error_of(event: Value) -> CommandError {
        Command::parse(&event).expect_err("must be refused")
    }

    #[test]
    fn start_defaults_to_the_default_connection() {
        assert_eq!(
            Command::parse(&json!({"start_authorization": {}})).unwrap(),
            Command::StartAuthorization(StartAuthorization::default())
        );
        assert_eq!(
            Command::parse(
                &json!({"start_authorization": {"connection_id": "eu", "replace_account": true}})
            )
            .unwrap(),
            Command::StartAuthorization(StartAuthorization {
                connection_id: ConnectionId::parse("eu").unwrap(),
                replace_account: true,
            })
        );
    }

    #[test]
    fn unknown_commands_list_the_accepted_ones() {
        for event in [
            json!({"start": {}}),
            json!({}),
            json!("start_authorization"),
            json!({"start_authorization": {}, "remove_connection": {"connection_id": "a"}}),
        ] {
            let error = error_of(event);
            assert_eq!(error.error_type(), "ValidationError");
            assert!(
                error.to_string().contains("register_service_account_key"),
                "{error}"
            );
        }
    }

    #[test]
    fn errors_never_quote_the_values_sent() {
        let key = "KeapAK-very-secret-key";
        for event in [
            json!({"register_service_account_key": {"secret_id": key, "key": key}}),
            json!({"register_service_account_key": {"secret_id": [key]}}),
            json!({"register_service_account_key": {"secret_id": format!("{key} x")}}),
            json!({"start_authorization": {"connection_id": key.replace('-', " ")}}),
            json!({"start_authorization": {"replace_account": key}}),
        ] {
            let error = error_of(event);
            assert_eq!(error.error_type(), "ValidationError");
            assert!(!error.to_string().contains("very-secret"), "{error}");
            assert!(!error.to_string().contains("very secret"), "{error}");
        }
    }

    #[test]
    fn removal_needs_an_explicit_connection() {
        assert!(
            error_of(json!({"remove_connection": {}}))
                .to_string()
                .contains("connection_id is required")
        );
        assert_eq!(
            Command::parse(&json!({"remove_connection": {"connection_id": "old"}})).unwrap(),
            Command::RemoveConnection(RemoveConnection {
                connection_id: ConnectionId::parse("old").unwrap()
            })
        );
    }
}
