//! Requests per operation: Keap's at the sandbox's request log, AWS's at the emulator's
//! counter scoped to one table and one secret (and EventBridge's at its request log, scoped to
//! one bus), and the floors they must not exceed.

use std::collections::{BTreeMap, HashMap};

use keap_sandbox::Sandbox;
use keapalive_tests::emulator::Emulator;
use serde::Serialize;

const DYNAMODB_PREFIX: &str = "DynamoDB_20120810.";
const READS: &[&str] = &[
    "GetItem",
    "Scan",
    "Query",
    "BatchGetItem",
    "TransactGetItems",
];
const WRITES: &[&str] = &[
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
];

/// The resources one fixture's functions touch.
#[derive(Debug, Clone)]
pub struct AwsScope {
    pub table: String,
    pub secret_id: String,
    /// The EventBridge bus the function publishes to, if it has one.
    pub event_bus: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AwsSnapshot {
    table: HashMap<String, u64>,
    secret: HashMap<String, u64>,
    put_events: u64,
}

impl AwsSnapshot {
    pub async fn take(emulator: &Emulator, scope: &AwsScope) -> Self {
        let put_events = match &scope.event_bus {
            Some(bus) => put_events_to(emulator, bus).await,
            None => 0,
        };
        Self {
            table: emulator.request_counts_for(&scope.table).await,
            secret: emulator.request_counts_for(&scope.secret_id).await,
            put_events,
        }
    }
}

/// `PutEvents` requests to `bus` so far. The emulator's per-resource counter keys on a
/// request's top-level name (`TableName`, `SecretId`, ...), and a `PutEvents` names its bus
/// only inside each entry, so these are counted in the request log, which records the bus.
async fn put_events_to(emulator: &Emulator, bus: &str) -> u64 {
    emulator
        .request_log()
        .await
        .iter()
        .filter(|request| request["action"] == "PutEvents" && request["bus"].as_str() == Some(bus))
        .count() as u64
}

/// What one operation cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    pub keap: u64,
    /// `"PUT /crm/rest/v1/contacts"`, ... in arrival order.
    pub keap_requests: Vec<String>,
    /// DynamoDB operation name → requests.
    pub dynamodb: BTreeMap<String, u64>,
    pub secrets: u64,
    /// EventBridge `PutEvents` requests.
    pub put_events: u64,
}

impl Measured {
    /// AWS requests between two snapshots, and the Keap requests the sandbox logged since its
    /// log was last cleared.
    pub fn between(before: &AwsSnapshot, after: &AwsSnapshot, sandbox: &Sandbox) -> Self {
        let keap_requests: Vec<String> = sandbox
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        let mut dynamodb = BTreeMap::new();
        for (target, count) in difference(&before.table, &after.table) {
            let name = target.strip_prefix(DYNAMODB_PREFIX).unwrap_or(&target);
            *dynamodb.entry(name.to_owned()).or_default() += count;
        }
        Self {
            keap: keap_requests.len() as u64,
            keap_requests,
            dynamodb,
            secrets: difference(&before.secret, &after.secret).values().sum(),
            put_events: after.put_events.saturating_sub(before.put_events),
        }
    }

    pub fn dynamodb_reads(&self) -> u64 {
        self.count_of(READS)
    }

    pub fn dynamodb_writes(&self) -> u64 {
        self.count_of(WRITES)
    }

    /// DynamoDB requests that are neither a known read nor a known write.
    pub fn dynamodb_other(&self) -> u64 {
        let total: u64 = self.dynamodb.values().sum();
        total - self.dynamodb_reads() - self.dynamodb_writes()
    }

    fn count_of(&self, names: &[&str]) -> u64 {
        names
            .iter()
            .filter_map(|name| self.dynamodb.get(*name))
            .sum()
    }

    /// The worst of two measurements, field by field (for an operation measured many times).
    pub fn worst(self, other: Measured) -> Measured {
        let mut dynamodb = self.dynamodb;
        for (name, count) in other.dynamodb {
            let entry = dynamodb.entry(name).or_default();
            *entry = (*entry).max(count);
        }
        let keap_requests = if other.keap > self.keap {
            other.keap_requests
        } else {
            self.keap_requests
        };
        Measured {
            keap: self.keap.max(other.keap),
            keap_requests,
            dynamodb,
            secrets: self.secrets.max(other.secrets),
            put_events: self.put_events.max(other.put_events),
        }
    }

    pub fn dynamodb_summary(&self) -> String {
        let parts: Vec<String> = self
            .dynamodb
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(name, count)| format!("{count} {name}"))
            .collect();
        if parts.is_empty() {
            "0".to_owned()
        } else {
            parts.join(" + ")
        }
    }
}

fn difference(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(target, count)| {
            let earlier = before.get(target).copied().unwrap_or(0);
            (target.clone(), count.saturating_sub(earlier))
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// The most an operation may cost (docs/design.md, "Contact upsert", and issue 9).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    pub keap: u64,
    pub dynamodb_reads: u64,
    pub dynamodb_writes: u64,
    pub secrets: u64,
    /// EventBridge `PutEvents` requests (counted only for a function given a bus).
    pub put_events: u64,
}

impl Floor {
    pub fn describe(&self) -> String {
        format!(
            "K{} R{} W{} S{} E{}",
            self.keap, self.dynamodb_reads, self.dynamodb_writes, self.secrets, self.put_events
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationCount {
    pub operation: String,
    /// Through which binary, or "library".
    pub measured_through: String,
    /// How many times it was measured; `measured` is the worst.
    pub samples: usize,
    pub measured: Measured,
    pub floor: Floor,
    pub note: String,
}

impl OperationCount {
    pub fn violations(&self) -> Vec<String> {
        let m = &self.measured;
        let f = &self.floor;
        let mut over = Vec::new();
        let mut check = |what: &str, got: u64, most: u64| {
            if got > most {
                over.push(format!("{}: {what} = {got}, floor {most}", self.operation));
            }
        };
        check("Keap requests", m.keap, f.keap);
        check("DynamoDB reads", m.dynamodb_reads(), f.dynamodb_reads);
        check("DynamoDB writes", m.dynamodb_writes(), f.dynamodb_writes);
        check("DynamoDB other requests", m.dynamodb_other(), 0);
        check("Secrets Manager requests", m.secrets, f.secrets);
        check("EventBridge PutEvents requests", m.put_events, f.put_events);
        over
    }
}
