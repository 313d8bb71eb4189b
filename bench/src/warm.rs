//! Warm containers: what each operation costs once the container has its clients, cached
//! credential, secret and tag ids; the overhead of a warm upsert over 1,000+ invocations; and
//! keap-hooks' answer time, which Keap waits for.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::binaries;
use crate::container::{Container, INVOKE_DEADLINE};
use crate::counts::{Floor, Measured, OperationCount};
use crate::events;
use crate::stats::{Summary, ms};
use crate::world::{Subject, TAGS, World};

/// One refresh in a container that already read the client secret.
pub async fn warm_refresh(world: &World) -> Result<OperationCount, String> {
    let measured = second_operation(world, Subject::Refresher).await?;
    Ok(OperationCount {
        operation: "one refresh, warm container".to_owned(),
        measured_through: binaries::REFRESHER.to_owned(),
        samples: 1,
        measured,
        floor: REFRESH_WARM,
        note: "scheduled run with 1 due connection; secret cached (5 min)".to_owned(),
    })
}

/// One callback in a container that already read the client secret.
pub async fn warm_callback(world: &World) -> Result<OperationCount, String> {
    let measured = second_operation(world, Subject::Callback).await?;
    Ok(OperationCount {
        operation: "callback, warm container".to_owned(),
        measured_through: binaries::CALLBACK.to_owned(),
        samples: 1,
        measured,
        floor: CALLBACK_WARM,
        note: "state consume + code exchange + pair write + state retired + projected read-back; secret cached"
            .to_owned(),
    })
}

/// The run lists connections with one query of the status index per status (`active`,
/// `needs_reauthorization`): the refresher may not scan, since a scan would read state items.
/// A third query (status `removed`) finds tombstones whose lifecycle events a dead writer left
/// unpublished (docs/design.md, "Lifecycle events": the run's sweep).
/// Writes: lease, the presentation counted before it is made (docs/design.md, "Refresh
/// protocol"), commit.
pub const REFRESH_COLD: Floor = Floor {
    keap: 1,
    dynamodb_reads: 3,
    dynamodb_writes: 3,
    secrets: 1,
    put_events: 0,
};
pub const REFRESH_WARM: Floor = Floor {
    secrets: 0,
    ..REFRESH_COLD
};
/// The state consume is a conditional update whose outcome survives a lost answer, then the
/// consumed state is deleted (housekeeping): one write more than a bare delete. The pair write
/// returns nothing (the callback's role may not read tokens back), so one projected `GetItem`
/// (generation, authorized_by, keap_app) tells the generation stored; a consistent projected
/// read before the exchange gives the pair write what to condition on (issue 22).
pub const CALLBACK_COLD: Floor = Floor {
    keap: 1,
    dynamodb_reads: 2,
    dynamodb_writes: 3,
    secrets: 1,
    put_events: 0,
};
pub const CALLBACK_WARM: Floor = Floor {
    secrets: 0,
    ..CALLBACK_COLD
};
/// The cold upsert reads the connection once; the OAuth grant needs no secret.
pub const UPSERT_COLD: Floor = Floor {
    keap: 1,
    dynamodb_reads: 1,
    dynamodb_writes: 0,
    secrets: 0,
    put_events: 0,
};
/// The default `KEAPALIVE_CONNECTION_RECHECK_SECS`, which the bench's containers run with.
const CONNECTION_RECHECK_SECS: u64 = 60;

pub const UPSERT_WARM: Floor = Floor {
    keap: 1,
    dynamodb_reads: 0,
    dynamodb_writes: 0,
    secrets: 0,
    put_events: 0,
};
/// access-token hands out the stored token: cold, one connection read; warm, nothing at all.
pub const ACCESS_TOKEN_COLD: Floor = Floor {
    keap: 0,
    ..UPSERT_COLD
};
pub const ACCESS_TOKEN_WARM: Floor = Floor {
    keap: 0,
    ..UPSERT_WARM
};
/// keap-proxy sends the caller's one request; cold, it reads the connection once.
pub const PROXY_COLD: Floor = UPSERT_COLD;
pub const PROXY_WARM: Floor = UPSERT_WARM;
/// keap-hooks, cold or warm alike: a consistent read of the hook item on every delivery (no
/// cache: a removed subscription must get its 410 at once) and one `PutEvents` (a delivery of
/// 3 objects is one entry). It never calls Keap and reads no secret.
pub const HOOK_DELIVERY: Floor = Floor {
    keap: 0,
    dynamodb_reads: 1,
    dynamodb_writes: 0,
    secrets: 0,
    put_events: 1,
};

/// Starts a container, does the operation once (cold), then measures it a second time.
async fn second_operation(world: &World, subject: Subject) -> Result<Measured, String> {
    let path = binaries::locate(subject.binary())?;
    let container = Container::start(&path, &world.env(subject, &[])).await?;
    let first = world.prepare(subject, "warm-first").await?;
    let (answer, _) = container.invoke(first, INVOKE_DEADLINE).await?;
    world.check(subject, &answer)?;
    world.consume(subject).await?;

    let second = world.prepare(subject, "warm-second").await?;
    let before = world.snapshot(subject).await;
    let (answer, _) = container.invoke(second, INVOKE_DEADLINE).await?;
    let after = world.snapshot(subject).await;
    world.check(subject, &answer)?;
    world.consume(subject).await?;
    container.stop().await;
    let fixture = world
        .fixture(subject)
        .ok_or_else(|| format!("{} has no fixture", subject.binary()))?;
    Ok(Measured::between(&before, &after, &fixture.sandbox))
}

/// The container's Keap limiter for the overhead loop. At the default 10/s the limiter, by
/// design, spaces back-to-back upserts of one container ~105 ms apart, which would measure the
/// limiter instead of the code; at 1,000/s (the most allowed) the spacing is ~1.05 ms.
pub const OVERHEAD_KEAP_RATE_PER_SEC: u32 = 1_000;
/// Each upsert starts at least this long after the previous one started: more than the
/// limiter's spacing at [`OVERHEAD_KEAP_RATE_PER_SEC`], so an upsert never waits for its Keap
/// slot and the loop times the code, not the limiter. The bench spins (yielding) rather than
/// sleeps to the next start, so the machine stays as awake as in back-to-back invocations; the
/// wait is part of no invocation's time.
const UPSERT_SPACING: Duration = Duration::from_micros(1_500);

#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    pub invocations: usize,
    pub keap_rate_per_sec: u32,
    /// Warm upsert invocation, as the runtime API host times it (queue → answer).
    pub upsert_ms: Summary,
    /// The sandbox's own handling of the upsert's one Keap request.
    pub keap_handling_ms: Summary,
    /// Per invocation: upsert time − Keap handling time.
    pub overhead_ms: Summary,
    /// hello-lambda's invocation through the same host: the runtime API round trip.
    pub hello_ms: Summary,
    /// median(overhead) − median(hello): what keapalive adds over an empty handler.
    pub net_overhead_ms: f64,
}

pub struct UpsertResults {
    pub operations: Vec<OperationCount>,
    pub overhead: Overhead,
}

/// The upsert's warm operations, then `invocations` warm upserts interleaved with as many
/// hello-world invocations.
pub async fn upsert(world: &World, invocations: usize) -> Result<UpsertResults, String> {
    let upsert_path = binaries::locate(binaries::UPSERT)?;
    let hello_path = binaries::locate(binaries::HELLO)?;
    let rate = OVERHEAD_KEAP_RATE_PER_SEC.to_string();
    let env = world.env(Subject::Upsert, &[("KEAPALIVE_KEAP_RATE_PER_SEC", &rate)]);
    let upsert = Container::start(&upsert_path, &env).await?;
    let hello = Container::start(&hello_path, &world.env(Subject::Hello, &[])).await?;
    let mut operations = Vec::new();

    // Cold: reads the connection; warm from here on.
    invoke_upsert(world, &upsert, events::upsert("first@example.com", &[])).await?;

    let tags_first =
        invoke_upsert(world, &upsert, events::upsert("tags1@example.com", &TAGS)).await?;
    operations.push(OperationCount {
        operation: format!("upsert, {} tag names not cached yet", TAGS.len()),
        measured_through: binaries::UPSERT.to_owned(),
        samples: 1,
        measured: tags_first,
        // PUT + one GET /tags?name= per tag + one POST .../tags for all.
        floor: Floor {
            keap: 2 + TAGS.len() as u64,
            ..UPSERT_WARM
        },
        note: "tag ids then cached per container (KEAPALIVE_MODEL_CACHE_SECS)".to_owned(),
    });
    let tags_cached =
        invoke_upsert(world, &upsert, events::upsert("tags2@example.com", &TAGS)).await?;
    operations.push(OperationCount {
        operation: format!("warm upsert, {} tags (ids cached)", TAGS.len()),
        measured_through: binaries::UPSERT.to_owned(),
        samples: 1,
        measured: tags_cached,
        floor: Floor {
            keap: 2,
            ..UPSERT_WARM
        },
        note: "PUT contact + one POST applying all tags".to_owned(),
    });

    let looped = overhead_loop(world, Subject::Upsert, &upsert, &hello, invocations, |i| {
        events::upsert(&format!("warm{}@example.com", i % 100), &[])
    })
    .await?;
    operations.insert(
        0,
        warm_loop_count(
            "warm upsert, no tags",
            binaries::UPSERT,
            &looped,
            UPSERT_WARM,
            invocations,
        ),
    );
    upsert.stop().await;
    hello.stop().await;

    Ok(UpsertResults {
        operations,
        overhead: looped.overhead,
    })
}

/// What [`overhead_loop`] measured.
pub struct Looped {
    pub overhead: Overhead,
    /// The most Keap requests any one invocation made, and which.
    worst_keap: Measured,
    /// AWS requests over the whole loop.
    aws: Measured,
    took: Duration,
}

/// `invocations` warm invocations of `subject` (events from `event`) interleaved with as many
/// hello-world invocations; each one's time minus the sandbox's handling of its Keap requests.
async fn overhead_loop(
    world: &World,
    subject: Subject,
    container: &Container,
    hello: &Container,
    invocations: usize,
    event: impl Fn(usize) -> serde_json::Value,
) -> Result<Looped, String> {
    let sandbox = &world
        .fixture(subject)
        .ok_or_else(|| format!("{} has no fixture", subject.binary()))?
        .sandbox;
    let mut invoke_ms = Vec::with_capacity(invocations);
    let mut handling_ms = Vec::with_capacity(invocations);
    let mut overhead_ms = Vec::with_capacity(invocations);
    let mut hello_ms = Vec::with_capacity(invocations);
    let mut worst_keap = Measured::default();
    let before = world.snapshot(subject).await;
    let loop_started = Instant::now();
    let mut last_invocation = Instant::now();
    for i in 0..invocations {
        // Alternate which goes first, so neither always follows the other's wake-up.
        let hello_first = i % 2 == 0;
        if hello_first {
            hello_ms.push(ms(invoke_hello(hello).await?));
        }
        while last_invocation.elapsed() < UPSERT_SPACING {
            tokio::task::yield_now().await;
        }
        last_invocation = Instant::now();
        sandbox.clear_requests();
        let (answer, took) = container.invoke(event(i), INVOKE_DEADLINE).await?;
        world.check(subject, &answer)?;
        // Outside the timed invocation, like the sandbox's log below.
        world.consume(subject).await?;
        let requests = sandbox.requests();
        let handling: Duration = requests.iter().map(|r| r.handling).sum();
        if requests.len() as u64 > worst_keap.keap {
            worst_keap = Measured {
                keap: requests.len() as u64,
                keap_requests: requests
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path))
                    .collect(),
                ..Measured::default()
            };
        }
        invoke_ms.push(ms(took));
        handling_ms.push(ms(handling));
        overhead_ms.push(ms(took.saturating_sub(handling)));
        if !hello_first {
            hello_ms.push(ms(invoke_hello(hello).await?));
        }
    }
    let after = world.snapshot(subject).await;
    let overhead = Summary::of(&overhead_ms);
    let hello = Summary::of(&hello_ms);
    Ok(Looped {
        overhead: Overhead {
            invocations,
            keap_rate_per_sec: OVERHEAD_KEAP_RATE_PER_SEC,
            upsert_ms: Summary::of(&invoke_ms),
            keap_handling_ms: Summary::of(&handling_ms),
            overhead_ms: overhead,
            hello_ms: hello,
            net_overhead_ms: overhead.median - hello.median,
        },
        worst_keap,
        aws: Measured::between(&before, &after, sandbox),
        took: loop_started.elapsed(),
    })
}

/// The loop's requests as an operation: Keap the most in any invocation, AWS the total, which a
/// warm container keeps to one connection read per recheck interval.
fn warm_loop_count(
    operation: &str,
    function: &str,
    looped: &Looped,
    floor: Floor,
    invocations: usize,
) -> OperationCount {
    OperationCount {
        operation: operation.to_owned(),
        measured_through: function.to_owned(),
        samples: invocations,
        measured: Measured {
            dynamodb: looped.aws.dynamodb.clone(),
            secrets: looped.aws.secrets,
            put_events: looped.aws.put_events,
            ..looped.worst_keap.clone()
        },
        floor: Floor {
            dynamodb_reads: looped.took.as_secs() / CONNECTION_RECHECK_SECS,
            ..floor
        },
        note: format!(
            "Keap: most in any of {invocations} invocations; AWS: total over all of them \
             (≤ 1 read per {CONNECTION_RECHECK_SECS} s)"
        ),
    }
}

/// access-token warm: `invocations` requests for the cached token interleaved with hello-world.
pub async fn access_token(world: &World, invocations: usize) -> Result<UpsertResults, String> {
    let path = binaries::locate(binaries::ACCESS_TOKEN)?;
    let hello_path = binaries::locate(binaries::HELLO)?;
    let vending = Container::start(&path, &world.env(Subject::AccessToken, &[])).await?;
    let hello = Container::start(&hello_path, &world.env(Subject::Hello, &[])).await?;
    let first = world.prepare(Subject::AccessToken, "vend-warm").await?;
    let (answer, _) = vending.invoke(first, INVOKE_DEADLINE).await?;
    world.check(Subject::AccessToken, &answer)?;
    let looped = overhead_loop(
        world,
        Subject::AccessToken,
        &vending,
        &hello,
        invocations,
        |_| events::access_token(),
    )
    .await?;
    vending.stop().await;
    hello.stop().await;
    Ok(UpsertResults {
        operations: vec![warm_loop_count(
            "warm access-token",
            binaries::ACCESS_TOKEN,
            &looped,
            ACCESS_TOKEN_WARM,
            invocations,
        )],
        overhead: looped.overhead,
    })
}

/// keap-proxy warm: `invocations` contact lookups (`GET /v1/contacts?email=`) interleaved with
/// hello-world, as the upsert's loop.
pub async fn proxy(world: &World, invocations: usize) -> Result<UpsertResults, String> {
    let proxy_path = binaries::locate(binaries::PROXY)?;
    let hello_path = binaries::locate(binaries::HELLO)?;
    let rate = OVERHEAD_KEAP_RATE_PER_SEC.to_string();
    let env = world.env(Subject::Proxy, &[("KEAPALIVE_KEAP_RATE_PER_SEC", &rate)]);
    let proxy = Container::start(&proxy_path, &env).await?;
    let hello = Container::start(&hello_path, &world.env(Subject::Hello, &[])).await?;
    // Cold: reads the connection; warm from here on.
    let first = world.prepare(Subject::Proxy, "proxy-warm").await?;
    let (answer, _) = proxy.invoke(first, INVOKE_DEADLINE).await?;
    world.check(Subject::Proxy, &answer)?;
    let looped = overhead_loop(world, Subject::Proxy, &proxy, &hello, invocations, |_| {
        events::proxy_get("proxy-warm@example.com")
    })
    .await?;
    proxy.stop().await;
    hello.stop().await;
    Ok(UpsertResults {
        operations: vec![warm_loop_count(
            "warm proxy GET",
            binaries::PROXY,
            &looped,
            PROXY_WARM,
            invocations,
        )],
        overhead: looped.overhead,
    })
}

/// keap-hooks warm: `invocations` deliveries of the same `contact.add` (Keap retrying one, as
/// far as keap-hooks can tell) interleaved with hello-world. Each invocation's time is what
/// Keap waits for: the consistent `GetItem` and the `PutEvents` against moto included.
pub async fn hooks(world: &World, invocations: usize) -> Result<UpsertResults, String> {
    let path = binaries::locate(binaries::HOOKS)?;
    let hello_path = binaries::locate(binaries::HELLO)?;
    let receiver = Container::start(&path, &world.env(Subject::Hooks, &[])).await?;
    let hello = Container::start(&hello_path, &world.env(Subject::Hello, &[])).await?;
    // Cold: builds the AWS connector; warm from here on.
    let first = world.prepare(Subject::Hooks, "hooks-warm").await?;
    let (answer, _) = receiver.invoke(first, INVOKE_DEADLINE).await?;
    world.check(Subject::Hooks, &answer)?;
    world.consume(Subject::Hooks).await?;
    let delivery = world.prepare(Subject::Hooks, "hooks-loop").await?;
    let looped = overhead_loop(
        world,
        Subject::Hooks,
        &receiver,
        &hello,
        invocations,
        |_| delivery.clone(),
    )
    .await?;
    receiver.stop().await;
    hello.stop().await;
    let n = invocations as u64;
    let count = OperationCount {
        operation: "warm hook delivery".to_owned(),
        measured_through: binaries::HOOKS.to_owned(),
        samples: invocations,
        measured: Measured {
            dynamodb: looped.aws.dynamodb.clone(),
            secrets: looped.aws.secrets,
            put_events: looped.aws.put_events,
            ..looped.worst_keap.clone()
        },
        // Totals over the loop against the per-delivery floor times the deliveries: every
        // delivery was answered 200, which takes at least its read and its PutEvents, so a
        // total within the floor means each one kept it.
        floor: Floor {
            dynamodb_reads: n * HOOK_DELIVERY.dynamodb_reads,
            put_events: n * HOOK_DELIVERY.put_events,
            ..HOOK_DELIVERY
        },
        note: format!(
            "Keap: most in any of {invocations} deliveries; AWS: total over all of them \
             (1 consistent GetItem + 1 PutEvents each)"
        ),
    };
    Ok(UpsertResults {
        operations: vec![count],
        overhead: looped.overhead,
    })
}

async fn invoke_upsert(
    world: &World,
    container: &Container,
    event: serde_json::Value,
) -> Result<Measured, String> {
    let sandbox = &world.upsert.sandbox;
    sandbox.clear_requests();
    let before = world.snapshot(Subject::Upsert).await;
    let (answer, _) = container.invoke(event, INVOKE_DEADLINE).await?;
    let after = world.snapshot(Subject::Upsert).await;
    world.check(Subject::Upsert, &answer)?;
    Ok(Measured::between(&before, &after, sandbox))
}

async fn invoke_hello(container: &Container) -> Result<Duration, String> {
    let (answer, took) = container.invoke(events::hello(), INVOKE_DEADLINE).await?;
    if answer.get("echo") != Some(&events::hello()) {
        return Err(format!("hello-lambda answered {answer}"));
    }
    Ok(took)
}
