"""Offline checks of infra/template.yaml: least privilege, the environment contract, alarms, data safety.

Runs with the infra virtualenv's Python (cfn-lint is the only dependency: its decoder reads the
short intrinsic forms like !Ref and !GetAtt). Usage: python infra/checks/test_template.py [template]

Every check also runs against deliberately broken copies of the template (MUTANTS below): each
broken copy must fail at least one check, so a check that can no longer fail is itself a failure.
"""

from __future__ import annotations

import json
import copy
import re
import sys
import tomllib
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from cfnlint.decode import decode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rust_names  # noqa: E402  (infra/checks/rust_names.py)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "infra" / "template.yaml"

FUNCTIONS = {
    # logical id -> binary / package name (docs/design.md, "Configuration": names are part of the contract)
    "OAuthCallbackFunction": "oauth-callback",
    "TokenRefresherFunction": "token-refresher",
    "ContactUpsertFunction": "contact-upsert",
    "OperatorFunction": "operator",
    "KeapProxyFunction": "keap-proxy",
    "AccessTokenFunction": "access-token",
    "KeapHooksFunction": "keap-hooks",
}
CALLBACK, REFRESHER, UPSERT, OPERATOR, PROXY, VENDING, HOOKS = FUNCTIONS

# Which function needs which variable (issue 7 / docs/design.md, "Configuration").
REQUIRED_ENV = {
    CALLBACK: {
        "KEAPALIVE_TABLE", "KEAPALIVE_CLIENT_SECRET_ID", "KEAPALIVE_REDIRECT_URI",
        "KEAPALIVE_STAGE", "KEAPALIVE_FUNCTION_TIMEOUT_SECS",
    },
    OPERATOR: {
        "KEAPALIVE_TABLE", "KEAPALIVE_CLIENT_SECRET_ID", "KEAPALIVE_REDIRECT_URI",
        "KEAPALIVE_STAGE", "KEAPALIVE_KEY_SECRET_PREFIX", "KEAPALIVE_FUNCTION_TIMEOUT_SECS",
        "KEAPALIVE_HOOKS_BASE_URL", "KEAPALIVE_PROXY_FUNCTION",
    },
    REFRESHER: {
        "KEAPALIVE_TABLE", "KEAPALIVE_CLIENT_SECRET_ID", "KEAPALIVE_REFRESH_WINDOW_SECS",
        "KEAPALIVE_LEASE_SECS", "KEAPALIVE_REFRESH_CONCURRENCY", "KEAPALIVE_KEAP_RATE_PER_SEC",
        "KEAPALIVE_STAGE", "KEAPALIVE_FUNCTION_TIMEOUT_SECS",
    },
    UPSERT: {
        "KEAPALIVE_TABLE", "KEAPALIVE_CLIENT_SECRET_ID", "KEAPALIVE_REFRESH_WINDOW_SECS",
        "KEAPALIVE_LEASE_SECS", "KEAPALIVE_CREATE_MISSING_TAGS", "KEAPALIVE_DEAD_LETTER_QUEUE_URL",
        "KEAPALIVE_KEAP_RATE_PER_SEC", "KEAPALIVE_STAGE", "KEAPALIVE_KEY_SECRET_PREFIX",
        "KEAPALIVE_FUNCTION_TIMEOUT_SECS", "KEAPALIVE_KEY_RATE_PER_SEC",
        "KEAPALIVE_CONNECTION_RECHECK_SECS",
    },
    PROXY: {
        "KEAPALIVE_TABLE", "KEAPALIVE_CLIENT_SECRET_ID", "KEAPALIVE_REFRESH_WINDOW_SECS",
        "KEAPALIVE_LEASE_SECS", "KEAPALIVE_KEAP_RATE_PER_SEC", "KEAPALIVE_STAGE",
        "KEAPALIVE_KEY_SECRET_PREFIX", "KEAPALIVE_FUNCTION_TIMEOUT_SECS",
        "KEAPALIVE_KEY_RATE_PER_SEC", "KEAPALIVE_CONNECTION_RECHECK_SECS",
        "KEAPALIVE_PROXY_CONNECTIONS",
    },
    VENDING: {
        "KEAPALIVE_TABLE", "KEAPALIVE_CLIENT_SECRET_ID", "KEAPALIVE_REFRESH_WINDOW_SECS",
        "KEAPALIVE_LEASE_SECS", "KEAPALIVE_KEAP_RATE_PER_SEC", "KEAPALIVE_STAGE",
        "KEAPALIVE_FUNCTION_TIMEOUT_SECS", "KEAPALIVE_CONNECTION_RECHECK_SECS",
        "KEAPALIVE_PROXY_CONNECTIONS",
    },
    HOOKS: {
        "KEAPALIVE_TABLE", "KEAPALIVE_CLIENT_SECRET_ID", "KEAPALIVE_STAGE",
        "KEAPALIVE_FUNCTION_TIMEOUT_SECS",
    },
}
# Every function records and publishes lifecycle events (docs/events.md).
for _required in REQUIRED_ENV.values():
    _required.add("KEAPALIVE_EVENT_BUS")
# The lifecycle events each function may put (docs/events.md): oauth-callback only its own
# change; every function that marks or removes, connection events and nothing else.
LIFECYCLE_SOURCE = "keapalive"
LIFECYCLE_DETAIL_TYPES = {
    CALLBACK: ("StringEquals", ["keapalive.connection.authorized"]),
    OPERATOR: ("StringLike", ["keapalive.connection.*"]),
    # and the hook check's gap event.
    REFRESHER: ("StringLike", ["keapalive.connection.*", "keapalive.hooks.gap"]),
    UPSERT: ("StringLike", ["keapalive.connection.*"]),
    PROXY: ("StringLike", ["keapalive.connection.*"]),
    VENDING: ("StringLike", ["keapalive.connection.*"]),
    # keap-hooks puts Keap's changes, never a lifecycle event (docs/events.md).
    HOOKS: ("StringLike", ["keap.*"]),
}
TOMB_CONDITION = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["tomb#*"]}}
HOOK_CONDITION = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["hook#*"]}}
# What Config accepts, read from shared/src/config.rs (one source: infra/checks/rust_names.py).
KNOWN_ENV = rust_names.rust_env_names(rust_names.rust_sources())

EXPECTED_SIZING = {  # memory MB, timeout s
    CALLBACK: (128, 28),
    REFRESHER: (256, 300),
    UPSERT: (128, 30),
    OPERATOR: (128, 90),
    PROXY: (128, 30),
    VENDING: (128, 25),
    HOOKS: (128, 25),
}

# Resource "*" is allowed only where AWS offers no narrower resource. None is needed today;
# X-Ray tracing (xray:PutTraceSegments) would be the first entry if tracing is turned on.
STAR_RESOURCE_EXCEPTIONS: set[str] = set()

# The namespace and the metric names the Rust code emits, read from its sources.
EMF_NAMESPACE = rust_names.rust_metric_namespace(rust_names.rust_sources())
EMF_METRICS = rust_names.rust_metric_names(rust_names.rust_sources())
# Emitted by contact-upsert only when they happen: their alarms must treat missing data as the
# healthy case (every other metric comes from each refresher run, whose absence must breach).
EVENT_METRICS = {"SpuriousUnauthorized", "UnauthorizedIncident", "HooksInactive", "HookDeliveriesFailed"}
# metric -> (comparison, threshold) the issue asks for
REQUIRED_METRIC_ALARMS = {
    "ConnectionsNeedingReauthorization": ("GreaterThanOrEqualToThreshold", 1),
    "ClientCredentialsRejected": ("GreaterThanOrEqualToThreshold", 1),
    "CircuitBreakerOpen": ("GreaterThanOrEqualToThreshold", 1),
    "RefreshFailedTransient": ("GreaterThanOrEqualToThreshold", 3),
    "SecondsUntilEarliestExpiry": ("LessThanThreshold", 7200),
    "SecondsSinceOldestRefresh": ("GreaterThanThreshold", 259200),
    "MalformedConnections": ("GreaterThanOrEqualToThreshold", 1),
    "CommitOutcomeUnknown": ("GreaterThanOrEqualToThreshold", 1),
    "UnauthorizedIncident": ("GreaterThanOrEqualToThreshold", 1),
    "SpuriousUnauthorized": ("GreaterThanOrEqualToThreshold", 10),
}
# Functions that take refresh leases: the refresher, and contact-upsert (on-demand refresh).
LEASE_TAKERS = (REFRESHER, UPSERT, PROXY, VENDING)

REQUIRED_OUTPUTS = {
    "CallbackUrl", "ContactUpsertFunctionArn", "ContactUpsertFunctionName",
    "OAuthCallbackFunctionName", "OperatorFunctionName", "UpsertQueueUrl", "TableName",
    "ClientSecretId", "KeapProxyFunctionName", "KeapProxyFunctionArn",
    "AccessTokenFunctionName", "AccessTokenFunctionArn", "EventBusName",
}

KEY_PREFIX_ARN = (
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
    ":secret:keapalive/${Stage}/keys/*"
)
CONN_CONDITION = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["conn#*"]}}
STATE_KEYS = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["state#*"]}}
# The sparse indexes (docs/design.md, "Data model"): name -> (hash key, projection).
INDEXES = {
    "connections-by-status": ("status", "ALL"),
    "pending-by-connection": ("connection_id", "KEYS_ONLY"),
    "hooks-by-connection": ("hook_connection_id", "KEYS_ONLY"),
}
STATUS_INDEX_ARN = "${ConnectionsTable.Arn}/index/connections-by-status"
PENDING_INDEX_ARN = "${ConnectionsTable.Arn}/index/pending-by-connection"
HOOK_INDEX_ARN = "${ConnectionsTable.Arn}/index/hooks-by-connection"
# Attributes holding a credential: the public function may never read one.
TOKEN_ATTRIBUTES = {"access_token", "refresh_token", "orphan_pair"}
# Keap's per-client-id limits (docs/connections.md, quota budget; Keap: 1,500 a minute; spikes of 25 a second).
KEAP_CLIENT_REQUESTS_PER_SEC = 25
# A Service Account Key's quota (docs/connections.md): 240 a minute; 5/s spike arrest observed.
KEY_REQUESTS_PER_MINUTE = 240
KEY_SPIKE_PER_SEC = 5


# --------------------------------------------------------------------------- template helpers


def load(path: Path) -> dict[str, Any]:
    template, matches = decode(str(path))
    if matches or template is None:
        raise SystemExit(f"cannot parse {path}: {[str(m) for m in matches]}")
    return plain(template)


def plain(value: Any) -> Any:
    """cfn-lint's node types carry line numbers; plain dicts, lists and strs compare simply."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def resources(t: dict, type_: str | None = None) -> dict[str, dict]:
    return {k: v for k, v in t["Resources"].items() if type_ is None or v.get("Type") == type_}


def props(t: dict, logical_id: str) -> dict:
    return t["Resources"][logical_id].get("Properties", {})


def merged_function_props(t: dict, logical_id: str) -> dict:
    """Function properties after SAM's Globals merge (maps merge, local wins, lists append)."""

    def merge(g: Any, local: Any) -> Any:
        if isinstance(g, dict) and isinstance(local, dict):
            if any(k == "Ref" or k.startswith("Fn::") for k in [*g, *local]):
                return local
            out = dict(g)
            for k, v in local.items():
                out[k] = merge(out[k], v) if k in out else v
            return out
        if isinstance(g, list) and isinstance(local, list):
            return g + local
        return local

    globals_ = t.get("Globals", {}).get("Function", {})
    return merge(copy.deepcopy(globals_), copy.deepcopy(props(t, logical_id)))


def is_ref(value: Any, target: str) -> bool:
    return value == {"Ref": target}


def is_getatt(value: Any, target: str, attribute: str) -> bool:
    return value in ({"Fn::GetAtt": [target, attribute]}, {"Fn::GetAtt": f"{target}.{attribute}"})


def sub_string(value: Any) -> str | None:
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return None


def referenced_ids(value: Any) -> set[str]:
    """Logical ids and parameters a value refers to (Ref, GetAtt, ${X} and ${X.Attr} in Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref" and isinstance(v, str):
                found.add(v)
            elif k == "Fn::GetAtt":
                found.add(v[0] if isinstance(v, list) else v.split(".")[0])
            elif k == "Fn::Sub":
                text = v if isinstance(v, str) else v[0]
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
                if isinstance(v, list):
                    found |= referenced_ids(v[1])
            else:
                found |= referenced_ids(v)
    elif isinstance(value, list):
        for v in value:
            found |= referenced_ids(v)
    return {f for f in found if not f.startswith("AWS::")}


def role_of(t: dict, function_id: str) -> str:
    role = props(t, function_id).get("Role")
    assert isinstance(role, dict) and "Fn::GetAtt" in role, (
        f"{function_id} must use an explicit role from this template (SAM's generated role "
        "brings AWSLambdaBasicExecutionRole with Resource '*')"
    )
    return next(iter(referenced_ids(role)))


def statements(t: dict, role_id: str) -> list[dict]:
    out = []
    for policy in props(t, role_id).get("Policies", []):
        out.extend(as_list(policy["PolicyDocument"]["Statement"]))
    return out


def all_identity_statements(t: dict) -> Iterator[tuple[str, dict]]:
    """Every identity-policy statement in the template, with the resource that holds it."""
    for rid, res in resources(t).items():
        p = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Role":
            for policy in p.get("Policies", []):
                for st in as_list(policy["PolicyDocument"]["Statement"]):
                    yield rid, st
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for st in as_list(p["PolicyDocument"]["Statement"]):
                yield rid, st
        elif res["Type"] == "AWS::Serverless::Function":
            for policy in as_list(p.get("Policies", [])):
                for st in as_list(policy.get("Statement", [])) if isinstance(policy, dict) else []:
                    yield rid, st


def actions(st: dict) -> set[str]:
    return {a.lower() for a in as_list(st.get("Action", []))}


def allowed_actions(t: dict, role_id: str) -> set[str]:
    return set().union(*(actions(st) for st in statements(t, role_id) if st["Effect"] == "Allow"))


def sam_events(t: dict, function_id: str, type_: str) -> list[dict]:
    events = props(t, function_id).get("Events", {})
    return [e.get("Properties", {}) for e in events.values() if e.get("Type") == type_]


def parameter_default(t: dict, name: str) -> Any:
    return t["Parameters"][name].get("Default")


# --------------------------------------------------------------------------- checks

CHECKS: list[Callable[[dict], None]] = []


def check(fn: Callable[[dict], None]) -> Callable[[dict], None]:
    CHECKS.append(fn)
    return fn


@check
def functions_use_explicit_lambda_only_roles(t: dict) -> None:
    for fid in FUNCTIONS:
        p = props(t, fid)
        assert "Policies" not in p, f"{fid}: put permissions in its role, not SAM Policies"
        role_id = role_of(t, fid)
        role = t["Resources"][role_id]
        assert role["Type"] == "AWS::IAM::Role", f"{fid}: {role_id} is not an IAM role"
        rp = role["Properties"]
        assert not rp.get("ManagedPolicyArns"), f"{role_id}: managed policies are not scoped"
        trust = as_list(rp["AssumeRolePolicyDocument"]["Statement"])
        assert trust == [{
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }], f"{role_id}: only Lambda may assume it"
    roles = [role_of(t, fid) for fid in FUNCTIONS]
    assert len(set(roles)) == len(roles), "each function needs its own role"


@check
def no_wildcard_actions_or_resources(t: dict) -> None:
    for holder, st in all_identity_statements(t):
        for action in actions(st):
            assert "*" not in action, f"{holder}: wildcard action {action}"
        assert "NotAction" not in st and "NotResource" not in st, f"{holder}: Not* widens access"
        for resource in as_list(st.get("Resource", [])):
            if resource == "*":
                assert actions(st) <= STAR_RESOURCE_EXCEPTIONS, (
                    f"{holder}: Resource '*' for {sorted(actions(st))}"
                )


@check
def policies_name_only_this_stacks_resources(t: dict) -> None:
    """Table and secrets by this stack's ARN or the Stage-scoped key prefix: never another stage's."""
    for holder, st in all_identity_statements(t):
        for resource in as_list(st.get("Resource", [])):
            if resource == "*":
                continue
            text = sub_string(resource)
            if text is not None:
                assert text in (KEY_PREFIX_ARN, STATUS_INDEX_ARN, PENDING_INDEX_ARN, HOOK_INDEX_ARN), (
                    f"{holder}: unexpected ARN pattern {text}"
                )
                continue
            ids = referenced_ids(resource)
            assert ids and ids <= set(t["Resources"]), f"{holder}: {resource} is not in this stack"


def callback_readable_attributes() -> list[str]:
    """CALLBACK_READABLE_ATTRIBUTES as the Rust code declares it: the template must grant
    exactly what the callback's read-back projects, or the read fails in AWS (not in moto)."""
    source = (REPO_ROOT / "shared" / "src" / "token_store" / "dynamodb.rs").read_text()
    block = re.search(r"CALLBACK_READABLE_ATTRIBUTES: \[&str; \d+\] =\s*\[([^\]]*)\]", source)
    assert block, "CALLBACK_READABLE_ATTRIBUTES not found in shared/src/token_store/dynamodb.rs"
    return re.findall(r'"([^"]+)"', block.group(1))


def leading_keys(st: dict) -> list[str] | None:
    return st.get("Condition", {}).get("ForAllValues:StringLike", {}).get("dynamodb:LeadingKeys")


@check
def callback_permissions(t: dict) -> None:
    """The public function (docs/design.md, "Containment"): it consumes state items, writes a
    pair it cannot read back, reads back only non-secret attributes, and reads only the client
    secret. No key secret, no Scan/Query, no PutItem (starting authorizations is the operator's)."""
    role = role_of(t, CALLBACK)
    acts = allowed_actions(t, role)
    assert not any(a.startswith("sqs:") for a in acts), "oauth-callback must not touch SQS"
    assert {a for a in acts if a.startswith("dynamodb:")} == {
        "dynamodb:getitem", "dynamodb:updateitem", "dynamodb:deleteitem",
        "dynamodb:conditioncheckitem",
    }, f"oauth-callback dynamodb actions: {sorted(acts)}"
    allowed_services = {"dynamodb", "secretsmanager", "logs", "events"}
    assert {a.split(":")[0] for a in acts} <= allowed_services, sorted(acts)
    readable = callback_readable_attributes()
    assert not set(readable) & TOKEN_ATTRIBUTES, f"the code reads back {readable}"
    for st in dynamodb_statements(t, role):
        keys = leading_keys(st)
        assert keys in (["state#*"], ["conn#*"], ["tomb#*"]), (
            f"oauth-callback {sorted(actions(st))}: LeadingKeys {keys}"
        )
        condition = st.get("Condition", {})
        if "dynamodb:conditioncheckitem" in actions(st) or keys == ["tomb#*"]:
            # The pair write's check of a removal's tombstone: it reads and writes nothing.
            assert keys == ["tomb#*"] and actions(st) == {"dynamodb:conditioncheckitem"}, (
                f"oauth-callback may only condition-check tombstones: {sorted(actions(st))} on {keys}"
            )
            continue
        if keys == ["state#*"]:
            assert actions(st) <= {"dynamodb:updateitem", "dynamodb:deleteitem"}, sorted(actions(st))
            continue
        # Connection items: no delete, no put; a write returns nothing, a read names its attributes.
        assert actions(st) in ({"dynamodb:updateitem"}, {"dynamodb:getitem"}), (
            f"oauth-callback on conn# items: {sorted(actions(st))} (one statement per action)"
        )
        if actions(st) == {"dynamodb:updateitem"}:
            returns = condition.get("StringEqualsIfExists", {}).get("dynamodb:ReturnValues")
            assert as_list(returns) == ["NONE"], (
                f"oauth-callback's connection writes may return something: ReturnValues {returns}"
            )
        else:
            attributes = condition.get("ForAllValues:StringEquals", {}).get("dynamodb:Attributes")
            assert attributes is not None, "oauth-callback's GetItem names no attributes"
            assert not set(attributes) & TOKEN_ATTRIBUTES, f"oauth-callback may read {sorted(attributes)}"
            assert sorted(attributes) == sorted(readable), (
                f"GetItem attributes {sorted(attributes)} != CALLBACK_READABLE_ATTRIBUTES {sorted(readable)}"
            )
            select = condition.get("StringEqualsIfExists", {}).get("dynamodb:Select")
            # Without it a GetItem with no projection returns every attribute.
            assert select == "SPECIFIC_ATTRIBUTES", f"oauth-callback's GetItem Select {select}"
    for st in statements(t, role):
        if "secretsmanager:getsecretvalue" in actions(st):
            assert as_list(st["Resource"]) == [{"Ref": "OAuthClientSecret"}], (
                "oauth-callback reads the client secret only, never a key secret"
            )
        for resource in as_list(st["Resource"]):
            ok = (
                is_getatt(resource, "ConnectionsTable", "Arn")
                or is_ref(resource, "OAuthClientSecret")
                or is_getatt(resource, "OAuthCallbackLogGroup", "Arn")
                or is_getatt(resource, "EventBus", "Arn")
            )
            assert ok, f"oauth-callback reaches beyond its table, client secret and log: {resource}"
    env = merged_function_props(t, CALLBACK).get("Environment", {}).get("Variables", {})
    assert "KEAPALIVE_KEY_SECRET_PREFIX" not in env, "oauth-callback handles no key"


@check
def operator_is_not_public(t: dict) -> None:
    """The operator commands' function: no event source, no resource policy, no function URL;
    only an IAM principal with lambda:InvokeFunction reaches it."""
    assert not props(t, OPERATOR).get("Events"), "the operator function has no event source"
    assert not props(t, OPERATOR).get("FunctionUrlConfig"), "no function URL"
    for rid, res in resources(t).items():
        p = res.get("Properties", {})
        if res["Type"] in ("AWS::Lambda::Permission", "AWS::Lambda::Url", "AWS::Lambda::EventSourceMapping"):
            target = p.get("FunctionName", p.get("TargetFunctionArn"))
            assert OPERATOR not in referenced_ids(target), f"{rid} exposes the operator function"
        if res["Type"] == "AWS::ApiGatewayV2::Integration":
            assert OPERATOR not in referenced_ids(p.get("IntegrationUri")), f"{rid} routes to it"


@check
def operator_permissions(t: dict) -> None:
    role = role_of(t, OPERATOR)
    acts = allowed_actions(t, role)
    assert {a for a in acts if a.startswith("dynamodb:")} == {
        "dynamodb:putitem", "dynamodb:updateitem", "dynamodb:deleteitem", "dynamodb:query",
        "dynamodb:getitem",
    }, f"operator dynamodb actions: {sorted(acts)}"
    assert {a.split(":")[0] for a in acts} <= {"dynamodb", "secretsmanager", "logs", "events", "lambda"}, sorted(acts)
    # Keap's hooks API only through keap-proxy: it may invoke that function and no other.
    for st in statements(t, role):
        if any(a.startswith("lambda:") for a in actions(st)):
            assert actions(st) == {"lambda:invokefunction"}, sorted(actions(st))
            assert as_list(st["Resource"]) == [{"Fn::GetAtt": [PROXY, "Arn"]}], st["Resource"]
    readable = callback_readable_attributes()
    for st in dynamodb_statements(t, role):
        if actions(st) == {"dynamodb:query"}:
            assert as_list(st["Resource"]) in (
                [{"Fn::Sub": PENDING_INDEX_ARN}], [{"Fn::Sub": HOOK_INDEX_ARN}],
            ), "the operator queries only the keys-only pending-links and hooks indexes"
            continue
        keys = leading_keys(st)
        assert keys in (["state#*"], ["conn#*"], ["tomb#*"], ["hook#*"]), (
            f"operator {sorted(actions(st))}: LeadingKeys {keys}"
        )
        if keys == ["hook#*"]:
            # Subscriptions hold a token's hash, never a token, key or pair.
            assert actions(st) <= {"dynamodb:getitem", "dynamodb:updateitem", "dynamodb:deleteitem"}
            continue
        condition = st.get("Condition", {})
        if keys == ["state#*"]:
            assert actions(st) <= {"dynamodb:putitem", "dynamodb:deleteitem"}, sorted(actions(st))
            continue
        # Connection items and tombstones (issue 22): the operator never gets an item back.
        if actions(st) == {"dynamodb:getitem"}:
            attributes = condition.get("ForAllValues:StringEquals", {}).get("dynamodb:Attributes")
            if keys == ["tomb#*"]:
                # Which of a tombstone's events to clear: its pending events, nothing else.
                assert attributes == ["pending_events"], f"operator reads tombstones' {attributes}"
                assert condition.get("StringEqualsIfExists", {}).get("dynamodb:Select") == "SPECIFIC_ATTRIBUTES"
                continue
            assert keys == ["conn#*"], f"operator GetItem on {keys}"
            assert attributes is not None and sorted(attributes) == sorted(readable), (
                f"operator GetItem attributes {attributes} != CALLBACK_READABLE_ATTRIBUTES {sorted(readable)}"
            )
            select = condition.get("StringEqualsIfExists", {}).get("dynamodb:Select")
            assert select == "SPECIFIC_ATTRIBUTES", f"operator GetItem Select {select}"
            continue
        if keys == ["tomb#*"]:
            assert actions(st) == {"dynamodb:putitem", "dynamodb:updateitem"}, (
                f"operator on tombstones: {sorted(actions(st))}"
            )
        else:
            assert actions(st) <= {"dynamodb:updateitem", "dynamodb:deleteitem"}, sorted(actions(st))
        returns = condition.get("StringEqualsIfExists", {}).get("dynamodb:ReturnValues")
        assert as_list(returns) == ["NONE"], (
            f"operator {sorted(actions(st))} on {keys} may return values: ReturnValues {returns}"
        )


def dynamodb_statements(t: dict, role: str) -> list[dict]:
    return [st for st in statements(t, role) if any(a.startswith("dynamodb:") for a in actions(st))]


@check
def refresher_permissions(t: dict) -> None:
    role = role_of(t, REFRESHER)
    acts = allowed_actions(t, role)
    # No Scan of the table: it names no partition key, so no LeadingKeys condition can keep it
    # off state items. The refresher lists connections by querying the sparse status index
    # instead; it scans only the keys-only hooks index, which holds hook items and nothing else.
    assert {a for a in acts if a.startswith("dynamodb:")} == {
        "dynamodb:getitem", "dynamodb:updateitem", "dynamodb:query", "dynamodb:scan",
        "dynamodb:deleteitem",
    }, f"token-refresher dynamodb actions: {sorted(acts)}"
    assert {a.split(":")[0] for a in acts} <= {"dynamodb", "secretsmanager", "logs", "events", "lambda"}, sorted(acts)
    for st in dynamodb_statements(t, role):
        if actions(st) & {"dynamodb:query", "dynamodb:scan"}:
            assert actions(st) <= {"dynamodb:query", "dynamodb:scan"}, "Query or Scan shares a statement with keyed actions"
            assert as_list(st["Resource"]) in ([{"Fn::Sub": STATUS_INDEX_ARN}], [{"Fn::Sub": HOOK_INDEX_ARN}]), (
                f"token-refresher may query only the status and hooks indexes: {st['Resource']}"
            )
            if "dynamodb:scan" in actions(st):
                assert as_list(st["Resource"]) == [{"Fn::Sub": HOOK_INDEX_ARN}], (
                    f"token-refresher may scan only the hooks index: {st['Resource']}"
                )
            continue
        # Connection items, tombstones whose events a writer left pending (the sweep), and
        # hook subscriptions (check_hooks: a token's hash, never a token).
        assert st.get("Condition") in (CONN_CONDITION, TOMB_CONDITION, HOOK_CONDITION), (
            f"token-refresher {sorted(actions(st))} lacks conn#*, tomb#* or hook#*"
        )
        # It deletes only subscriptions whose connection is gone, never a connection or tombstone.
        if "dynamodb:deleteitem" in actions(st):
            assert st.get("Condition") == HOOK_CONDITION, (
                f"token-refresher may delete hook items only: {st.get('Condition')}"
            )
    # check_hooks reaches Keap's hooks API only through keap-proxy.
    for st in statements(t, role):
        if any(a.startswith("lambda:") for a in actions(st)):
            assert actions(st) == {"lambda:invokefunction"}, sorted(actions(st))
            assert as_list(st["Resource"]) == [{"Fn::GetAtt": [PROXY, "Arn"]}], st["Resource"]
    for st in statements(t, role):
        if "secretsmanager:getsecretvalue" in actions(st):
            assert as_list(st["Resource"]) == [{"Ref": "OAuthClientSecret"}], "refresher: client secret only"


@check
def upsert_permissions(t: dict) -> None:
    role = role_of(t, UPSERT)
    acts = allowed_actions(t, role)
    assert {a for a in acts if a.startswith("dynamodb:")} == {
        "dynamodb:getitem", "dynamodb:updateitem",
    }, f"contact-upsert dynamodb actions: {sorted(acts)}"
    for st in dynamodb_statements(t, role):
        assert st.get("Condition") == CONN_CONDITION, f"contact-upsert {sorted(actions(st))} lacks conn#*"
    sqs = [st for st in statements(t, role) if any(a.startswith("sqs:") for a in actions(st))]
    for st in sqs:
        if "sqs:sendmessage" in actions(st):
            assert actions(st) == {"sqs:sendmessage"}
            assert as_list(st["Resource"]) == [{"Fn::GetAtt": ["UpsertDeadLetterQueue", "Arn"]}], (
                "contact-upsert may send to the dead-letter queue only"
            )
        else:
            assert as_list(st["Resource"]) == [{"Fn::GetAtt": ["UpsertQueue", "Arn"]}]


@check
def proxy_and_vending_permissions(t: dict) -> None:
    """keap-proxy and access-token (docs/design.md, "Containment"): contact-upsert's item rights
    and nothing more — GetItem/UpdateItem on conn#* items, the client secret; keap-proxy also the
    Stage's key secrets, access-token none (it refuses key connections before reading one). No
    queue, no other table, no index, no event source, no public route."""
    for fid, secrets in ((PROXY, 2), (VENDING, 1)):
        name = FUNCTIONS[fid]
        role = role_of(t, fid)
        acts = allowed_actions(t, role)
        assert acts == {
            "logs:createlogstream", "logs:putlogevents", "dynamodb:getitem", "dynamodb:updateitem",
            "secretsmanager:getsecretvalue", "events:putevents",
        }, f"{name} actions: {sorted(acts)}"
        for st in dynamodb_statements(t, role):
            assert st.get("Condition") == CONN_CONDITION, f"{name} {sorted(actions(st))} lacks conn#*"
            assert as_list(st["Resource"]) == [{"Fn::GetAtt": ["ConnectionsTable", "Arn"]}], (
                f"{name}: the table itself, no index"
            )
        secret_resources = [
            r for st in statements(t, role) if "secretsmanager:getsecretvalue" in actions(st)
            for r in as_list(st["Resource"])
        ]
        assert len(secret_resources) == secrets and {"Ref": "OAuthClientSecret"} in secret_resources, (
            f"{name} secrets: {secret_resources}"
        )
        if secrets == 2:
            assert any(sub_string(r) == KEY_PREFIX_ARN for r in secret_resources), f"{name}: key prefix"
        assert not props(t, fid).get("Events"), f"{name}: direct invocation only, no event source"
        for pid, perm in resources(t, "AWS::Lambda::Permission").items():
            assert fid not in referenced_ids(perm["Properties"].get("FunctionName")), (
                f"{pid}: a resource policy on {name}"
            )


@check
def lifecycle_event_rights(t: dict) -> None:
    """PutEvents (docs/events.md): the stage's own bus, named keapalive-<stage>; each role's
    statement restricted by events:source (keapalive) and events:detail-type (LIFECYCLE_DETAIL_TYPES):
    oauth-callback only `keapalive.connection.authorized`, the functions that mark or remove only
    `keapalive.connection.*`. Nothing else in the stack may put events."""
    bus = props(t, "EventBus")
    assert t["Resources"]["EventBus"]["Type"] == "AWS::Events::EventBus"
    assert sub_string(bus["Name"]) == "keapalive-${Stage}", f"bus name {bus['Name']}"
    roles = {role_of(t, fid): fid for fid in FUNCTIONS}
    for holder, st in all_identity_statements(t):
        if not any(a.startswith("events:") for a in actions(st)):
            continue
        assert holder in roles, f"{holder} may put events"
        fid = roles[holder]
        name = FUNCTIONS[fid]
        assert actions(st) == {"events:putevents"}, f"{name}: {sorted(actions(st))}"
        assert as_list(st["Resource"]) == [{"Fn::GetAtt": ["EventBus", "Arn"]}], (
            f"{name} puts events on {st['Resource']}"
        )
        condition = st.get("Condition", {})
        source = condition.get("StringEquals", {}).get("events:source")
        assert as_list(source) == [LIFECYCLE_SOURCE], f"{name}: events:source {source}"
        operator, allowed = LIFECYCLE_DETAIL_TYPES[fid]
        detail = {
            op: as_list(keys["events:detail-type"])
            for op, keys in condition.items() if "events:detail-type" in keys
        }
        assert detail == {operator: allowed} or (
            operator == "StringLike" and list(detail) == ["StringEquals"]
            and all(d.startswith("keapalive.connection.") for d in as_list(detail["StringEquals"]))
        ), f"{name} may put detail-types {detail}, expected {operator} {allowed}"
        for op, values in detail.items():
            for value in as_list(values):
                family = "keap." if fid == HOOKS else "keapalive.connection."
                assert value.startswith(family) or (fid == REFRESHER and value == "keapalive.hooks.gap"), (
                    f"{name} may put {value}"
                )
                assert "*" not in value or op == "StringLike", f"{name}: {op} {value}"
    for fid, name in FUNCTIONS.items():
        putting = [st for st in statements(t, role_of(t, fid)) if "events:putevents" in actions(st)]
        assert len(putting) == 1, f"{name}: {len(putting)} PutEvents statements, expected one"


@check
def hooks_permissions(t: dict) -> None:
    """keap-hooks is public (POST /keap/hooks/{token}): it reads hook items and nothing else of
    the table (no connection item, token or key; no secret at all), puts only keap.* events, and
    its route has throttling room for Keap's parallel deliveries (a 429 is a failed attempt to
    Keap) while the stage's access log never holds the path (the token)."""
    role = role_of(t, HOOKS)
    acts = allowed_actions(t, role)
    assert {a.split(":")[0] for a in acts} <= {"dynamodb", "events", "logs"}, sorted(acts)
    assert {a for a in acts if a.startswith("dynamodb:")} == {"dynamodb:getitem"}, sorted(acts)
    for st in dynamodb_statements(t, role):
        assert leading_keys(st) == ["hook#*"], f"keap-hooks reads {leading_keys(st)}"
    route = props(t, "HooksRoute")
    assert route["RouteKey"] == "POST /keap/hooks/{token}", route["RouteKey"]
    stage = props(t, "CallbackStage")
    settings = stage.get("RouteSettings", {}).get("POST /keap/hooks/{token}", {})
    assert settings.get("ThrottlingBurstLimit", 0) >= 50, f"hooks route burst {settings}"
    assert settings.get("ThrottlingRateLimit", 0) >= 20, f"hooks route rate {settings}"
    log_format = stage["AccessLogSettings"]["Format"]
    for leak in ("$context.path", "$context.http.path", "$context.routeKey.path", "$request.path"):
        assert leak not in log_format, f"the access log holds {leak}"
    permission = props(t, "HooksInvokePermission")
    assert sub_string(permission["SourceArn"]).endswith("/*/POST/keap/hooks/*"), permission


@check
def only_upsert_sends_to_sqs(t: dict) -> None:
    upsert_role = role_of(t, UPSERT)
    for holder, st in all_identity_statements(t):
        if any(a in ("sqs:sendmessage", "sqs:sendmessagebatch") for a in actions(st)):
            assert holder == upsert_role, f"{holder} may send to SQS"
    for rid, res in resources(t, "AWS::SQS::QueuePolicy").items():
        raise AssertionError(f"{rid}: a queue policy would let other principals use the queues")


@check
def environment_contract(t: dict) -> None:
    for fid, required in REQUIRED_ENV.items():
        env = merged_function_props(t, fid).get("Environment", {}).get("Variables", {})
        missing = required - set(env)
        assert not missing, f"{FUNCTIONS[fid]} lacks {sorted(missing)}"
        unknown = set(env) - KNOWN_ENV
        assert not unknown, f"{FUNCTIONS[fid]} sets variables outside the contract: {sorted(unknown)}"
        assert is_ref(env["KEAPALIVE_TABLE"], "ConnectionsTable")
        assert is_ref(env["KEAPALIVE_CLIENT_SECRET_ID"], "OAuthClientSecret")
        assert is_ref(env["KEAPALIVE_STAGE"], "Stage")
        if "KEAPALIVE_KEY_SECRET_PREFIX" in env:
            assert sub_string(env["KEAPALIVE_KEY_SECRET_PREFIX"]) == "keapalive/${Stage}/keys/"
        assert is_getatt(env["KEAPALIVE_EVENT_BUS"], "EventBus", "Name"), f"{FUNCTIONS[fid]}: KEAPALIVE_EVENT_BUS"
    upsert_env = merged_function_props(t, UPSERT)["Environment"]["Variables"]
    assert is_ref(upsert_env["KEAPALIVE_DEAD_LETTER_QUEUE_URL"], "UpsertDeadLetterQueue")
    assert is_ref(upsert_env["KEAPALIVE_KEY_RATE_PER_SEC"], "KeyRatePerSec")
    assert is_ref(upsert_env["KEAPALIVE_CONNECTION_RECHECK_SECS"], "ConnectionRecheckSecs")
    assert parameter_default(t, "ConnectionRecheckSecs") == 60, "the documented recheck bound"
    for fid in (PROXY, VENDING):
        served = merged_function_props(t, fid)["Environment"]["Variables"]["KEAPALIVE_PROXY_CONNECTIONS"]
        assert served == {"Fn::If": ["ServesEveryConnection", {"Ref": "AWS::NoValue"}, {"Ref": "ProxyConnections"}]}, (
            f"{FUNCTIONS[fid]}: KEAPALIVE_PROXY_CONNECTIONS must come from ProxyConnections, unset when empty "
            f"(Config refuses an empty list): {served}"
        )
    redirect = sub_string(merged_function_props(t, CALLBACK)["Environment"]["Variables"]["KEAPALIVE_REDIRECT_URI"])
    assert redirect == "${CallbackApi.ApiEndpoint}/oauth/callback", f"redirect URI {redirect}"


@check
def function_timeout_variable_equals_each_timeout(t: dict) -> None:
    # A deadline already past on arrival (local emulators) is replaced by this variable: it must
    # be the function's real Timeout, or a function would plan for time it does not have.
    for fid, name in FUNCTIONS.items():
        p = merged_function_props(t, fid)
        value = p.get("Environment", {}).get("Variables", {}).get("KEAPALIVE_FUNCTION_TIMEOUT_SECS")
        assert isinstance(value, (str, int)) and str(value).isdigit(), (
            f"{name}: KEAPALIVE_FUNCTION_TIMEOUT_SECS must be a literal number of seconds, not {value!r}"
        )
        assert int(value) == p["Timeout"], (
            f"{name}: KEAPALIVE_FUNCTION_TIMEOUT_SECS is {value}, its Timeout {p['Timeout']}"
        )


def commit_budget_secs() -> int:
    """COMMIT_BUDGET as shared/src/refresh/protocol.rs declares it."""
    source = (REPO_ROOT / "shared" / "src" / "refresh" / "protocol.rs").read_text()
    found = re.search(r"const COMMIT_BUDGET: Duration = Duration::from_secs\((\d+)\)", source)
    assert found, "COMMIT_BUDGET not found in shared/src/refresh/protocol.rs"
    return int(found.group(1))


def default_keap_timeout_secs() -> int:
    """KEAPALIVE_KEAP_TIMEOUT_SECS's default as shared/src/config.rs declares it."""
    source = (REPO_ROOT / "shared" / "src" / "config.rs").read_text()
    found = re.search(r'secs\(get, "KEAPALIVE_KEAP_TIMEOUT_SECS", (\d+),', source)
    assert found, "KEAPALIVE_KEAP_TIMEOUT_SECS default not found in shared/src/config.rs"
    return int(found.group(1))


# Functions that present a refresh token or an authorization code to Keap (issue 21).
PRESENTERS = (CALLBACK, REFRESHER, UPSERT, PROXY, VENDING)


@check
def presenters_have_time_to_store(t: dict) -> None:
    """After the last wait before a token or a code is presented, the Keap timeout plus the commit
    budget must be left: a Timeout below that could never store the pair Keap issues, and init
    refuses it (docs/design.md, "The fault model")."""
    budget = commit_budget_secs()
    for fid in PRESENTERS:
        p = merged_function_props(t, fid)
        env = p.get("Environment", {}).get("Variables", {})
        keap = int(env.get("KEAPALIVE_KEAP_TIMEOUT_SECS", default_keap_timeout_secs()))
        for name, value in (("Timeout", p["Timeout"]), ("KEAPALIVE_FUNCTION_TIMEOUT_SECS",
                                                       env.get("KEAPALIVE_FUNCTION_TIMEOUT_SECS"))):
            assert value is not None and int(value) >= keap + budget, (
                f"{FUNCTIONS[fid]}: {name} {value} < KEAPALIVE_KEAP_TIMEOUT_SECS {keap} + commit budget {budget}"
            )


@check
def callback_route_outlasts_the_function(t: dict) -> None:
    """The route's integration timeout is set explicitly (30 s, the HTTP API maximum) and above
    the callback's Timeout, so a callback that used its whole budget still answers the browser."""
    integrations = resources(t, "AWS::ApiGatewayV2::Integration")
    for rid, res in integrations.items():
        if not is_getatt(res["Properties"].get("IntegrationUri"), CALLBACK, "Arn"):
            continue
        millis = res["Properties"].get("TimeoutInMillis")
        assert millis == 30000, f"{rid}: TimeoutInMillis {millis}, expected 30000 set explicitly"
        assert millis > 1000 * props(t, CALLBACK)["Timeout"], (
            f"{rid}: TimeoutInMillis {millis} <= the callback's Timeout"
        )


@check
def functions_build_and_run_as_designed(t: dict) -> None:
    assert parameter_default(t, "Architecture") == "arm64"
    assert set(t["Parameters"]["Architecture"]["AllowedValues"]) == {"arm64", "x86_64"}
    for fid, name in FUNCTIONS.items():
        p = merged_function_props(t, fid)
        meta = t["Resources"][fid].get("Metadata", {})
        assert meta.get("BuildMethod") == "rust-cargolambda", fid
        assert meta.get("BuildProperties", {}).get("Binary") == name, f"{fid}: Binary must be {name}"
        assert p["Runtime"] == "provided.al2023" and p["Handler"] == "bootstrap", fid
        assert p["Architectures"] == [{"Ref": "Architecture"}], fid
        assert (p["MemorySize"], p["Timeout"]) == EXPECTED_SIZING[fid], f"{fid} memory/timeout"
        code_dir = (REPO_ROOT / "infra" / p["CodeUri"]).resolve()
        manifest = tomllib.loads((code_dir / "Cargo.toml").read_text())
        assert manifest["package"]["name"] == name, f"{fid}: CodeUri {code_dir} is not package {name}"
        logging = p.get("LoggingConfig", {})
        assert logging.get("LogFormat") == "JSON", f"{fid}: JSON logs"
        group = next(iter(referenced_ids(logging.get("LogGroup"))), None)
        assert group and t["Resources"][group]["Type"] == "AWS::Logs::LogGroup", f"{fid}: own log group"
        assert sub_string(props(t, group)["LogGroupName"]) == f"/aws/lambda/keapalive-${{Stage}}-{name}"


@check
def refresher_runs_alone_on_a_schedule(t: dict) -> None:
    p = props(t, REFRESHER)
    assert p.get("ReservedConcurrentExecutions") == 1, "token-refresher reserved concurrency must be 1"
    schedules = sam_events(t, REFRESHER, "Schedule") + sam_events(t, REFRESHER, "ScheduleV2")
    # The refresh schedule (no input: a scheduled event), and the hooks schedule, whose input
    # runs only the subscriptions check.
    refresh = [s for s in schedules if is_ref(s.get("Schedule"), "RefreshSchedule")]
    assert len(refresh) == 1 and "Input" not in refresh[0], refresh
    hooks = [s for s in schedules if s is not refresh[0]]
    assert len(hooks) == 1 and json.loads(hooks[0].get("Input", "null")) == {"check_hooks": True}, hooks
    assert parameter_default(t, "RefreshSchedule") == "rate(1 hour)"


@check
def upsert_queue_wiring(t: dict) -> None:
    queue = props(t, "UpsertQueue")
    timeout = props(t, UPSERT)["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * timeout, "visibility timeout must be >= 6x the function timeout"
    assert is_getatt(queue["RedrivePolicy"]["deadLetterTargetArn"], "UpsertDeadLetterQueue", "Arn")
    events = sam_events(t, UPSERT, "SQS")
    assert len(events) == 1 and is_getatt(events[0]["Queue"], "UpsertQueue", "Arn")
    assert events[0].get("FunctionResponseTypes") == ["ReportBatchItemFailures"]
    for qid in ("UpsertQueue", "UpsertDeadLetterQueue"):
        assert props(t, qid).get("SqsManagedSseEnabled") is True or props(t, qid).get("KmsMasterKeyId"), qid


@check
def upsert_queue_fifo_option(t: dict) -> None:
    """UpsertQueueType=fifo makes both queues FIFO (a FIFO queue's dead-letter queue must be
    FIFO too), with .fifo names, never content-based deduplication (A, B, A would lose the
    second A); standard leaves FifoQueue out (SQS refuses FifoQueue=false)."""
    parameter = t["Parameters"]["UpsertQueueType"]
    assert parameter["Default"] == "standard" and sorted(parameter["AllowedValues"]) == ["fifo", "standard"]
    assert t["Conditions"]["UpsertQueueIsFifo"] == {"Fn::Equals": [{"Ref": "UpsertQueueType"}, "fifo"]}
    for qid in ("UpsertQueue", "UpsertDeadLetterQueue"):
        q = props(t, qid)
        assert q.get("FifoQueue") == {"Fn::If": ["UpsertQueueIsFifo", True, {"Ref": "AWS::NoValue"}]}, (
            f"{qid}: FifoQueue must follow UpsertQueueIsFifo"
        )
        name = q.get("QueueName")
        assert isinstance(name, dict) and list(name) == ["Fn::If"] and name["Fn::If"][0] == "UpsertQueueIsFifo", (
            f"{qid}: a FIFO queue needs a .fifo name"
        )
        assert (sub_string(name["Fn::If"][1]) or "").endswith(".fifo"), f"{qid}: FIFO name must end in .fifo"
        assert name["Fn::If"][2] == {"Ref": "AWS::NoValue"}, qid
        assert not q.get("ContentBasedDeduplication"), f"{qid}: content-based deduplication drops A, B, A's second A"


@check
def table_is_safe(t: dict) -> None:
    table = t["Resources"]["ConnectionsTable"]
    assert table.get("DeletionPolicy") == "Retain" and table.get("UpdateReplacePolicy") == "Retain"
    p = table["Properties"]
    assert p.get("DeletionProtectionEnabled") is True, "deletion protection"
    assert p.get("BillingMode") == "PAY_PER_REQUEST", "on-demand"
    assert p.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") is True, "PITR"
    assert p.get("SSESpecification", {}).get("SSEEnabled") is True, "SSE"
    assert p.get("TimeToLiveSpecification") == {"AttributeName": "expires_at", "Enabled": True}, "TTL"
    assert p["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert {"AttributeName": "pk", "AttributeType": "S"} in p["AttributeDefinitions"]


@check
def indexes_are_sparse_as_designed(t: dict) -> None:
    """The refresher reads connections through `connections-by-status` (keyed on `status`, which
    only connection items carry); remove finds links through `pending-by-connection` (keyed on
    `connection_id`, which only state items carry); hook subscriptions are listed through
    `hooks-by-connection` (keyed on `hook_connection_id`, which only hook items carry). Another key would put the other kind of
    item into the index, and the IAM separation above would be gone."""
    p = props(t, "ConnectionsTable")
    found = {
        gsi["IndexName"]: (
            gsi["KeySchema"], gsi["Projection"]["ProjectionType"],
        )
        for gsi in p.get("GlobalSecondaryIndexes", [])
    }
    assert set(found) == set(INDEXES), f"indexes {sorted(found)}"
    for name, (key, projection) in INDEXES.items():
        schema, kind = found[name]
        assert schema == [{"AttributeName": key, "KeyType": "HASH"}], f"{name}: key {schema}"
        assert kind == projection, f"{name}: projection {kind}"
    defined = {d["AttributeName"]: d["AttributeType"] for d in p["AttributeDefinitions"]}
    assert defined == {"pk": "S", "status": "S", "connection_id": "S", "hook_connection_id": "S"}, defined


@check
def client_secret_holds_no_credentials(t: dict) -> None:
    secrets = resources(t, "AWS::SecretsManager::Secret")
    assert list(secrets) == ["OAuthClientSecret"], sorted(secrets)
    p = props(t, "OAuthClientSecret")
    # An edit here would make CloudFormation overwrite the operator's real credentials, and a
    # real value here would put credentials into the repository.
    assert p.get("SecretString") == '{"client_id":"","client_secret":""}', "placeholder changed"
    assert "GenerateSecretString" not in p


@check
def http_api_has_only_the_callback_route(t: dict) -> None:
    """The public HTTP API has two routes, each to its own public function: GET /oauth/callback
    (oauth-callback) and POST /keap/hooks/{token} (keap-hooks); no operator route, no other."""
    assert not resources(t, "AWS::Serverless::HttpApi") and not resources(t, "AWS::Serverless::Api")
    for fid in FUNCTIONS:
        for kind in ("HttpApi", "Api"):
            assert not sam_events(t, fid, kind), f"{fid}: {kind} events would add routes (and a cycle)"
    routes = resources(t, "AWS::ApiGatewayV2::Route")
    expected = {"GET /oauth/callback": (CALLBACK, "/*/GET/oauth/callback"),
                "POST /keap/hooks/{token}": (HOOKS, "/*/POST/keap/hooks/*")}
    keys = sorted(r["Properties"]["RouteKey"] for r in routes.values())
    assert keys == sorted(expected), f"routes: {keys}"
    for resource in routes.values():
        route = resource["Properties"]
        fid, arn_tail = expected[route["RouteKey"]]
        integration_id = next(iter(referenced_ids(route["Target"])))
        assert is_getatt(props(t, integration_id)["IntegrationUri"], fid, "Arn"), route["RouteKey"]
        permissions = [
            p["Properties"] for p in resources(t, "AWS::Lambda::Permission").values()
            if is_ref(p["Properties"]["FunctionName"], fid)
        ]
        assert len(permissions) == 1, f"{fid}: {len(permissions)} invoke permissions"
        assert sub_string(permissions[0]["SourceArn"]).endswith("${CallbackApi}" + arn_tail)


@check
def alarms_watch_the_refresher(t: dict) -> None:
    alarms = [a["Properties"] for a in resources(t, "AWS::CloudWatch::Alarm").values()]
    custom = [a for a in alarms if a.get("Namespace") == EMF_NAMESPACE]
    for alarm in custom:
        assert alarm["MetricName"] in EMF_METRICS, f"unknown metric {alarm['MetricName']}"
        assert alarm.get("Dimensions") == [{"Name": "Stage", "Value": {"Ref": "Stage"}}], alarm["MetricName"]
        expected = "notBreaching" if alarm["MetricName"] in EVENT_METRICS else "breaching"
        assert alarm.get("TreatMissingData") == expected, (
            f"{alarm['MetricName']}: missing data must be {expected}"
        )
    for metric, (comparison, threshold) in REQUIRED_METRIC_ALARMS.items():
        matching = [a for a in custom if a["MetricName"] == metric]
        assert matching, f"no alarm on {metric}"
        assert any(
            a["ComparisonOperator"] == comparison and a["Threshold"] == threshold for a in matching
        ), f"{metric}: expected {comparison} {threshold}"
    transient = next(a for a in custom if a["MetricName"] == "RefreshFailedTransient")
    assert transient["Period"] * transient["EvaluationPeriods"] == 10800, "3 failures over 3 hours"
    for alarm in alarms:
        assert is_ref(as_list(alarm.get("AlarmActions", []))[0], "AlarmTopic"), "alarms notify the topic"


@check
def lease_outlives_every_holder(t: dict) -> None:
    """A lease must outlive its holder: LeaseSecs may never go below the largest Timeout of a
    function that takes leases (docs/design.md, "The fault model")."""
    longest = max(props(t, fid)["Timeout"] for fid in LEASE_TAKERS)
    lease = t["Parameters"]["LeaseSecs"]
    assert lease.get("MinValue", 0) >= longest, (
        f"LeaseSecs MinValue {lease.get('MinValue')} < the longest lease holder's Timeout {longest}"
    )
    assert lease["Default"] >= lease["MinValue"]
    for fid in LEASE_TAKERS:
        env = props(t, fid)["Environment"]["Variables"]
        assert is_ref(env.get("KEAPALIVE_LEASE_SECS"), "LeaseSecs"), f"{fid}: lease from LeaseSecs"


@check
def alarms_watch_functions_and_dead_letters(t: dict) -> None:
    alarms = [a["Properties"] for a in resources(t, "AWS::CloudWatch::Alarm").values()]
    errors = {
        next(iter(referenced_ids(a["Dimensions"])))
        for a in alarms if a.get("Namespace") == "AWS/Lambda" and a["MetricName"] == "Errors"
    }
    assert errors == set(FUNCTIONS), f"function error alarms: {sorted(errors)}"
    refresher_errors = next(
        a for a in alarms
        if a.get("Namespace") == "AWS/Lambda" and referenced_ids(a["Dimensions"]) == {REFRESHER}
    )
    assert refresher_errors["TreatMissingData"] == "breaching", "no refresher invocation must alarm"
    dlq = [
        a for a in alarms
        if a.get("Namespace") == "AWS/SQS" and referenced_ids(a["Dimensions"]) == {"UpsertDeadLetterQueue"}
    ]
    assert dlq and dlq[0]["MetricName"] == "ApproximateNumberOfMessagesVisible" and dlq[0]["Threshold"] == 1


@check
def log_groups_have_retention(t: dict) -> None:
    groups = resources(t, "AWS::Logs::LogGroup")
    assert len(groups) >= 3
    for gid, group in groups.items():
        assert "RetentionInDays" in group["Properties"], f"{gid} keeps logs forever"


@check
def outputs_for_operators(t: dict) -> None:
    missing = REQUIRED_OUTPUTS - set(t.get("Outputs", {}))
    assert not missing, f"missing outputs {sorted(missing)}"
    assert sub_string(t["Outputs"]["CallbackUrl"]["Value"]) == "${CallbackApi.ApiEndpoint}/oauth/callback"


@check
def samconfig_has_the_three_stages(t: dict) -> None:
    config = tomllib.loads((REPO_ROOT / "infra" / "samconfig.toml").read_text())
    for stage in ("dev", "stage", "prod"):
        deploy = config[stage]["deploy"]["parameters"]
        assert deploy["stack_name"] == f"keapalive-{stage}", stage
        overrides = as_list(deploy["parameter_overrides"])
        assert f"Stage={stage}" in overrides, f"{stage}: Stage override"
        names = {o.split("=", 1)[0] for o in overrides}
        assert names <= set(t["Parameters"]), f"{stage}: unknown parameters {sorted(names - set(t['Parameters']))}"
        assert "Architecture" not in names, "one arm64 build is deployed to every stage"
        assert deploy["capabilities"] == "CAPABILITY_IAM" and deploy["resolve_s3"] is True, stage
        assert deploy["confirm_changeset"] is True, f"{stage}: humans confirm; CI passes --no-confirm-changeset"


@check
def no_circular_dependencies(t: dict) -> None:
    """CloudFormation rejects cycles at deploy time; cfn-lint misses the ones SAM creates."""
    res = t["Resources"]
    edges: dict[str, set[str]] = {rid: set() for rid in res}
    for rid, r in res.items():
        edges[rid] |= referenced_ids(r.get("Properties", {})) & set(res)
        edges[rid] |= set(as_list(r.get("DependsOn", []))) & set(res)
        if r["Type"] == "AWS::Serverless::Function":
            # SAM writes a function's API events into the API's body: the API depends on it.
            for event in r.get("Properties", {}).get("Events", {}).values():
                api = event.get("Properties", {}).get("ApiId") or event.get("Properties", {}).get("RestApiId")
                for api_id in referenced_ids(api) & set(res):
                    edges[api_id].add(rid)
    visiting, done = set(), set()

    def visit(node: str, path: list[str]) -> None:
        if node in done:
            return
        assert node not in visiting, "circular dependency: " + " -> ".join(path + [node])
        visiting.add(node)
        for nxt in sorted(edges[node]):
            visit(nxt, path + [node])
        visiting.discard(node)
        done.add(node)

    for rid in sorted(res):
        visit(rid, [])


def stage_parameters(t: dict) -> dict[str, dict[str, Any]]:
    """Parameter values of the defaults and of every samconfig stage (its overrides applied)."""
    defaults = {name: spec.get("Default") for name, spec in t["Parameters"].items()}
    config = tomllib.loads((REPO_ROOT / "infra" / "samconfig.toml").read_text())
    out = {"defaults": defaults}
    for stage in ("dev", "stage", "prod"):
        values = dict(defaults)
        for override in as_list(config[stage]["deploy"]["parameters"]["parameter_overrides"]):
            name, value = override.split("=", 1)
            values[name] = value
        out[stage] = values
    return out


def number_of(value: Any) -> float:
    return float(value)


@check
def keap_quota_is_budgeted(t: dict) -> None:
    """Keap's quota is per client id and shared: the refresher (one instance), contact-upsert
    (KeapRatePerSec per container x its reserved concurrency) and the callback route (one code
    exchange per request, the API's burst) together stay within 25 requests/s (1,500 a minute)."""
    refresher = props(t, REFRESHER)
    upsert = props(t, UPSERT)
    assert refresher.get("ReservedConcurrentExecutions") == 1, "the refresher's share assumes one instance"
    assert is_ref(refresher["Environment"]["Variables"].get("KEAPALIVE_KEAP_RATE_PER_SEC"), "RefresherKeapRatePerSec")
    assert is_ref(upsert["Environment"]["Variables"].get("KEAPALIVE_KEAP_RATE_PER_SEC"), "KeapRatePerSec")
    assert is_ref(upsert.get("ReservedConcurrentExecutions"), "UpsertReservedConcurrency"), (
        "contact-upsert's concurrency must be bounded (UpsertReservedConcurrency)"
    )
    proxy, vending = props(t, PROXY), props(t, VENDING)
    assert is_ref(proxy["Environment"]["Variables"].get("KEAPALIVE_KEAP_RATE_PER_SEC"), "ProxyKeapRatePerSec")
    assert is_ref(proxy.get("ReservedConcurrentExecutions"), "ProxyReservedConcurrency"), (
        "keap-proxy's concurrency must be bounded (ProxyReservedConcurrency)"
    )
    assert is_ref(vending.get("ReservedConcurrentExecutions"), "AccessTokenReservedConcurrency"), (
        "access-token's concurrency must be bounded (AccessTokenReservedConcurrency)"
    )
    vending_rate = vending["Environment"]["Variables"].get("KEAPALIVE_KEAP_RATE_PER_SEC")
    assert isinstance(vending_rate, (str, int)) and str(vending_rate).isdigit(), (
        f"access-token's Keap rate must be a literal: {vending_rate!r}"
    )
    callback_burst = props(t, "CallbackStage")["DefaultRouteSettings"]["ThrottlingBurstLimit"]
    assert isinstance(callback_burst, int), "the callback route's burst must be a literal"
    for where, values in stage_parameters(t).items():
        shares = [
            ("token-refresher", number_of(values["RefresherKeapRatePerSec"]) * 1),
            ("contact-upsert", number_of(values["KeapRatePerSec"]) * number_of(values["UpsertReservedConcurrency"])),
            ("keap-proxy", number_of(values["ProxyKeapRatePerSec"]) * number_of(values["ProxyReservedConcurrency"])),
            ("access-token", number_of(vending_rate) * number_of(values["AccessTokenReservedConcurrency"])),
            ("oauth-callback", callback_burst),
        ]
        total = sum(share for _, share in shares)
        assert total <= KEAP_CLIENT_REQUESTS_PER_SEC, (
            f"{where}: " + " + ".join(f"{n} {v:g}" for n, v in shares) + f" = {total:g} Keap requests/s "
            f"> {KEAP_CLIENT_REQUESTS_PER_SEC} (1,500 a minute per client id)"
        )


@check
def key_quota_is_budgeted(t: dict) -> None:
    """A key's quota is 240 a minute (a spike arrest of 5/s observed): the functions that call
    Keap with keys (contact-upsert, keap-proxy) hold each key to KeyRatePerSec per container, so
    KeyRatePerSec x their reserved concurrencies x 60 must stay within 240 a minute."""
    for fid in (UPSERT, PROXY):
        env = props(t, fid)["Environment"]["Variables"]
        assert is_ref(env.get("KEAPALIVE_KEY_RATE_PER_SEC"), "KeyRatePerSec"), f"{FUNCTIONS[fid]}: key rate"
    assert "KEAPALIVE_KEY_RATE_PER_SEC" not in props(t, VENDING)["Environment"]["Variables"], (
        "access-token never calls Keap with a key"
    )
    for where, values in stage_parameters(t).items():
        containers = number_of(values["UpsertReservedConcurrency"]) + number_of(values["ProxyReservedConcurrency"])
        per_second = number_of(values["KeyRatePerSec"]) * containers
        assert per_second * 60 <= KEY_REQUESTS_PER_MINUTE and per_second <= KEY_SPIKE_PER_SEC, (
            f"{where}: KeyRatePerSec {values['KeyRatePerSec']} x {containers:g} containers = "
            f"{per_second:g}/s, {per_second * 60:g} a minute per key (Keap: {KEY_REQUESTS_PER_MINUTE} "
            f"a minute, spikes of {KEY_SPIKE_PER_SEC}/s)"
        )


@check
def upsert_reserved_concurrency_above_queue_maximum(t: dict) -> None:
    """SQS polls beyond contact-upsert's reserved concurrency are throttled and, after
    maxReceiveCount receives, dead-lettered: the queue's MaximumConcurrency must stay below it
    (direct callers keep the difference; beyond it they get TooManyRequestsException)."""
    events = sam_events(t, UPSERT, "SQS")
    assert len(events) == 1
    assert is_ref(events[0].get("ScalingConfig", {}).get("MaximumConcurrency"), "UpsertMaxConcurrency")
    assert is_ref(props(t, UPSERT).get("ReservedConcurrentExecutions"), "UpsertReservedConcurrency")
    reserved, maximum = t["Parameters"]["UpsertReservedConcurrency"], t["Parameters"]["UpsertMaxConcurrency"]
    assert reserved["MinValue"] > maximum["MinValue"], "UpsertReservedConcurrency's floor must exceed the queue's"
    for where, values in stage_parameters(t).items():
        assert number_of(values["UpsertReservedConcurrency"]) > number_of(values["UpsertMaxConcurrency"]), (
            f"{where}: UpsertReservedConcurrency {values['UpsertReservedConcurrency']} must be above "
            f"UpsertMaxConcurrency {values['UpsertMaxConcurrency']}"
        )


# --------------------------------------------------------------------------- mutants
# Each mutant breaks one rule; the checks above must catch every one of them.


def _role_statements(t: dict, role: str) -> list[dict]:
    return t["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


def _sid(t: dict, role: str, sid: str) -> dict:
    return next(st for st in _role_statements(t, role) if st.get("Sid") == sid)


def _mutate_callback_puts_any_lifecycle_event(t: dict) -> None:
    st = _sid(t, "OAuthCallbackRole", "PublishLifecycleEvents")
    st["Condition"]["StringLike"] = {"events:detail-type": "keapalive.connection.*"}
    del st["Condition"]["StringEquals"]["events:detail-type"]


def _mutate_refresher_puts_other_detail_types(t: dict) -> None:
    st = _sid(t, "TokenRefresherRole", "PublishMarks")
    st["Condition"]["StringLike"]["events:detail-type"] = "keap.*"


def _mutate_operator_puts_any_source(t: dict) -> None:
    del _sid(t, "OperatorRole", "PublishLifecycleEvents")["Condition"]["StringEquals"]


def _mutate_upsert_puts_without_detail_type(t: dict) -> None:
    del _sid(t, "ContactUpsertRole", "PublishMarks")["Condition"]["StringLike"]


def _mutate_wildcard_action(t: dict) -> None:
    _sid(t, "OAuthCallbackRole", "ConsumeStateItems")["Action"] = "dynamodb:*"


def _mutate_star_resource(t: dict) -> None:
    _sid(t, "TokenRefresherRole", "ClientSecret")["Resource"] = "*"


def _mutate_callback_gets_sqs(t: dict) -> None:
    _role_statements(t, "OAuthCallbackRole").append(
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": {"Fn::GetAtt": ["UpsertQueue", "Arn"]}}
    )


def _mutate_refresher_sends_to_dlq(t: dict) -> None:
    _role_statements(t, "TokenRefresherRole").append(
        {"Effect": "Allow", "Action": "sqs:SendMessage",
         "Resource": {"Fn::GetAtt": ["UpsertDeadLetterQueue", "Arn"]}}
    )


def _mutate_upsert_loses_leading_keys(t: dict) -> None:
    del _sid(t, "ContactUpsertRole", "ConnectionItemsOnly")["Condition"]


def _mutate_upsert_writes_items(t: dict) -> None:
    _sid(t, "ContactUpsertRole", "ConnectionItemsOnly")["Action"].append("dynamodb:PutItem")


def _mutate_refresher_scan_under_condition(t: dict) -> None:
    _sid(t, "TokenRefresherRole", "ConnectionItemsOnly")["Action"].append("dynamodb:Scan")


def _mutate_refresher_scans_again(t: dict) -> None:
    finder = _sid(t, "TokenRefresherRole", "FindConnections")
    finder["Action"] = "dynamodb:Scan"
    finder["Resource"] = {"Fn::GetAtt": ["ConnectionsTable", "Arn"]}


def _mutate_refresher_scans_the_status_index(t: dict) -> None:
    finder = _sid(t, "TokenRefresherRole", "FindConnections")
    finder["Action"] = ["dynamodb:Query", "dynamodb:Scan"]


def _mutate_refresher_deletes_connections(t: dict) -> None:
    _sid(t, "TokenRefresherRole", "ConnectionItemsOnly")["Action"].append("dynamodb:DeleteItem")


def _mutate_refresher_queries_the_table(t: dict) -> None:
    _sid(t, "TokenRefresherRole", "FindConnections")["Resource"] = {"Fn::GetAtt": ["ConnectionsTable", "Arn"]}


def _mutate_refresher_queries_pending_links(t: dict) -> None:
    _sid(t, "TokenRefresherRole", "FindConnections")["Resource"] = {"Fn::Sub": PENDING_INDEX_ARN}


def _mutate_status_index_on_pk(t: dict) -> None:
    index = props(t, "ConnectionsTable")["GlobalSecondaryIndexes"][0]
    index["KeySchema"][0]["AttributeName"] = "pk"


def _mutate_callback_reads_tokens(t: dict) -> None:
    read = _sid(t, "OAuthCallbackRole", "ReadBackNoToken")
    read["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"].append("refresh_token")


def _mutate_callback_reads_whole_items(t: dict) -> None:
    del _sid(t, "OAuthCallbackRole", "ReadBackNoToken")["Condition"]["StringEqualsIfExists"]


def _mutate_callback_write_returns_values(t: dict) -> None:
    _sid(t, "OAuthCallbackRole", "WritePairReturningNothing")["Condition"]["StringEqualsIfExists"][
        "dynamodb:ReturnValues"] = ["NONE", "ALL_OLD"]


def _mutate_callback_reads_key_secrets(t: dict) -> None:
    _sid(t, "OAuthCallbackRole", "ClientSecret")["Resource"] = [
        {"Ref": "OAuthClientSecret"}, {"Fn::Sub": KEY_PREFIX_ARN},
    ]


def _mutate_callback_starts_authorizations(t: dict) -> None:
    _sid(t, "OAuthCallbackRole", "ConsumeStateItems")["Action"].append("dynamodb:PutItem")


def _mutate_callback_deletes_connections(t: dict) -> None:
    _sid(t, "OAuthCallbackRole", "ConsumeStateItems")["Condition"]["ForAllValues:StringLike"][
        "dynamodb:LeadingKeys"] = ["conn#*", "state#*"]


def _mutate_callback_unkeyed_read(t: dict) -> None:
    del _sid(t, "OAuthCallbackRole", "ReadBackNoToken")["Condition"]["ForAllValues:StringLike"]


def _mutate_operator_behind_the_route(t: dict) -> None:
    t["Resources"]["OperatorInvokePermission"] = {
        "Type": "AWS::Lambda::Permission",
        "Properties": {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Ref": OPERATOR},
            "Principal": "apigateway.amazonaws.com",
        },
    }


def _mutate_operator_scans(t: dict) -> None:
    _sid(t, "OperatorRole", "FindPendingLinks")["Resource"] = {"Fn::GetAtt": ["ConnectionsTable", "Arn"]}


def _mutate_quota_overspent(t: dict) -> None:
    t["Parameters"]["UpsertReservedConcurrency"]["Default"] = 10


def _mutate_refresher_rate_from_upsert_parameter(t: dict) -> None:
    t["Resources"][REFRESHER]["Properties"]["Environment"]["Variables"]["KEAPALIVE_KEAP_RATE_PER_SEC"] = {
        "Ref": "KeapRatePerSec"}
    t["Parameters"]["KeapRatePerSec"]["Default"] = 10


def _mutate_upsert_unbounded(t: dict) -> None:
    del t["Resources"][UPSERT]["Properties"]["ReservedConcurrentExecutions"]


def _mutate_reserved_at_queue_maximum(t: dict) -> None:
    t["Parameters"]["UpsertReservedConcurrency"]["Default"] = 2
    t["Parameters"]["UpsertReservedConcurrency"]["MinValue"] = 2


def _mutate_other_stage_secret(t: dict) -> None:
    _sid(t, "ContactUpsertRole", "ClientAndKeySecrets")["Resource"][1] = {
        "Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:keapalive/*"
    }


def _mutate_missing_env(t: dict) -> None:
    del t["Resources"][UPSERT]["Properties"]["Environment"]["Variables"]["KEAPALIVE_DEAD_LETTER_QUEUE_URL"]


def _mutate_missing_global_env(t: dict) -> None:
    del t["Globals"]["Function"]["Environment"]["Variables"]["KEAPALIVE_STAGE"]


def _mutate_concurrency(t: dict) -> None:
    t["Resources"][REFRESHER]["Properties"]["ReservedConcurrentExecutions"] = 2


def _mutate_short_lease(t: dict) -> None:
    t["Parameters"]["LeaseSecs"]["MinValue"] = 60


def _mutate_longer_upsert(t: dict) -> None:
    t["Resources"][UPSERT]["Properties"]["Timeout"] = 600


def _mutate_missing_data(t: dict) -> None:
    t["Resources"]["EarliestExpiryAlarm"]["Properties"]["TreatMissingData"] = "notBreaching"


def _mutate_event_alarm_breaches(t: dict) -> None:
    t["Resources"]["UnauthorizedIncidentAlarm"]["Properties"]["TreatMissingData"] = "breaching"


def _mutate_metric_name(t: dict) -> None:
    t["Resources"]["OldestRefreshAlarm"]["Properties"]["MetricName"] = "SecondsSinceLastRefresh"


def _mutate_table_retain(t: dict) -> None:
    t["Resources"]["ConnectionsTable"]["DeletionPolicy"] = "Delete"


def _mutate_table_ttl(t: dict) -> None:
    t["Resources"]["ConnectionsTable"]["Properties"]["TimeToLiveSpecification"]["AttributeName"] = "ttl"


def _mutate_table_pitr(t: dict) -> None:
    del t["Resources"]["ConnectionsTable"]["Properties"]["PointInTimeRecoverySpecification"]


def _mutate_visibility(t: dict) -> None:
    t["Resources"]["UpsertQueue"]["Properties"]["VisibilityTimeout"] = 30


def _mutate_secret_value(t: dict) -> None:
    t["Resources"]["OAuthClientSecret"]["Properties"]["SecretString"] = '{"client_id":"abc","client_secret":"xyz"}'


def _mutate_sam_http_api_cycle(t: dict) -> None:
    t["Resources"]["SamApi"] = {"Type": "AWS::Serverless::HttpApi", "Properties": {}}
    t["Resources"][CALLBACK]["Properties"]["Events"] = {
        "Callback": {"Type": "HttpApi", "Properties": {
            "ApiId": {"Ref": "SamApi"}, "Path": "/oauth/callback", "Method": "GET"}}
    }
    t["Resources"][CALLBACK]["Properties"]["Environment"]["Variables"]["KEAPALIVE_REDIRECT_URI"] = {
        "Fn::Sub": "https://${SamApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/oauth/callback"
    }


def _mutate_generated_role(t: dict) -> None:
    del t["Resources"][CALLBACK]["Properties"]["Role"]


def _mutate_log_retention(t: dict) -> None:
    del t["Resources"]["TokenRefresherLogGroup"]["Properties"]["RetentionInDays"]


def _mutate_binary(t: dict) -> None:
    t["Resources"][UPSERT]["Metadata"]["BuildProperties"]["Binary"] = "bootstrap"


def _mutate_function_timeout(t: dict) -> None:
    t["Resources"][UPSERT]["Properties"]["Timeout"] = 60


def _mutate_standard_dead_letter_queue(t: dict) -> None:
    del t["Resources"]["UpsertDeadLetterQueue"]["Properties"]["FifoQueue"]


def _mutate_content_based_deduplication(t: dict) -> None:
    t["Resources"]["UpsertQueue"]["Properties"]["ContentBasedDeduplication"] = {
        "Fn::If": ["UpsertQueueIsFifo", True, {"Ref": "AWS::NoValue"}]
    }


def _mutate_callback_timeout_below_floor(t: dict) -> None:
    t["Resources"][CALLBACK]["Properties"]["Timeout"] = 15
    t["Resources"][CALLBACK]["Properties"]["Environment"]["Variables"]["KEAPALIVE_FUNCTION_TIMEOUT_SECS"] = "15"


def _mutate_upsert_keap_timeout_too_long(t: dict) -> None:
    t["Resources"][UPSERT]["Properties"]["Environment"]["Variables"]["KEAPALIVE_KEAP_TIMEOUT_SECS"] = "25"


def _mutate_integration_timeout_implicit(t: dict) -> None:
    del t["Resources"]["CallbackIntegration"]["Properties"]["TimeoutInMillis"]


def _mutate_operator_write_returns_values(t: dict) -> None:
    del _sid(t, "OperatorRole", "RegisterAndRemoveConnections")["Condition"]["StringEqualsIfExists"]


def _mutate_operator_reads_tokens(t: dict) -> None:
    read = _sid(t, "OperatorRole", "ReadConnectionsNoToken")
    read["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"].append("refresh_token")


def _mutate_callback_writes_tombstones(t: dict) -> None:
    _sid(t, "OAuthCallbackRole", "CheckRemovalTombstones")["Action"] = [
        "dynamodb:ConditionCheckItem", "dynamodb:PutItem",
    ]


def _mutate_proxy_gets_sqs(t: dict) -> None:
    _role_statements(t, "KeapProxyRole").append({
        "Sid": "Queue", "Effect": "Allow", "Action": "sqs:SendMessage",
        "Resource": {"Fn::GetAtt": ["UpsertDeadLetterQueue", "Arn"]},
    })


def _mutate_proxy_loses_leading_keys(t: dict) -> None:
    del _sid(t, "KeapProxyRole", "ConnectionItemsOnly")["Condition"]


def _mutate_vending_reads_key_secrets(t: dict) -> None:
    _sid(t, "AccessTokenRole", "ClientSecret")["Resource"] = [
        {"Ref": "OAuthClientSecret"},
        {"Fn::Sub": KEY_PREFIX_ARN},
    ]


def _mutate_vending_queries_the_index(t: dict) -> None:
    _sid(t, "AccessTokenRole", "ConnectionItemsOnly")["Action"].append("dynamodb:Query")


def _mutate_proxy_on_a_schedule(t: dict) -> None:
    t["Resources"][PROXY]["Properties"]["Events"] = {
        "Tick": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 hour)"}}
    }


def _mutate_proxy_quota_overspent(t: dict) -> None:
    t["Parameters"]["ProxyReservedConcurrency"]["Default"] = 3


def _mutate_proxy_unbounded(t: dict) -> None:
    del t["Resources"][PROXY]["Properties"]["ReservedConcurrentExecutions"]


def _mutate_vending_rate_raised(t: dict) -> None:
    t["Resources"][VENDING]["Properties"]["Environment"]["Variables"]["KEAPALIVE_KEAP_RATE_PER_SEC"] = "5"


def _mutate_key_quota_overspent(t: dict) -> None:
    t["Parameters"]["KeyRatePerSec"]["Default"] = 5


def _mutate_proxy_allowlist_always_set(t: dict) -> None:
    t["Resources"][PROXY]["Properties"]["Environment"]["Variables"]["KEAPALIVE_PROXY_CONNECTIONS"] = {
        "Ref": "ProxyConnections"}


def _mutate_vending_timeout_below_floor(t: dict) -> None:
    t["Resources"][VENDING]["Properties"]["Timeout"] = 15
    t["Resources"][VENDING]["Properties"]["Environment"]["Variables"]["KEAPALIVE_FUNCTION_TIMEOUT_SECS"] = "15"


def _mutate_proxy_alarm_missing(t: dict) -> None:
    del t["Resources"]["KeapProxyErrorsAlarm"]


# mutant -> the check that must fail on it (other checks may fail too)
def _mutate_operator_invokes_any_function(t: dict) -> None:
    _sid(t, "OperatorRole", "ReachKeapThroughTheProxy")["Resource"] = {
        "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:*"
    }


def _mutate_hooks_schedule_without_input(t: dict) -> None:
    del t["Resources"][REFRESHER]["Properties"]["Events"]["HooksSchedule"]["Properties"]["Input"]


def _mutate_refresher_invokes_any_function(t: dict) -> None:
    _sid(t, "TokenRefresherRole", "ReachKeapHooksThroughTheProxy")["Resource"] = "*"


def _mutate_hooks_reads_connections(t: dict) -> None:
    _sid(t, "KeapHooksRole", "HookItemsOnly")["Condition"]["ForAllValues:StringLike"][
        "dynamodb:LeadingKeys"
    ].append("conn#*")


def _mutate_hooks_puts_lifecycle_events(t: dict) -> None:
    _sid(t, "KeapHooksRole", "PublishKeapChanges")["Condition"]["StringLike"][
        "events:detail-type"
    ] = "keapalive.connection.*"


def _mutate_hooks_route_throttled_like_the_callback(t: dict) -> None:
    del t["Resources"]["CallbackStage"]["Properties"]["RouteSettings"]


def _mutate_access_log_holds_the_path(t: dict) -> None:
    stage = t["Resources"]["CallbackStage"]["Properties"]
    stage["AccessLogSettings"]["Format"] += ',"path":"$context.path"'


MUTANTS: dict[Callable[[dict], None], Callable[[dict], None]] = {
    _mutate_hooks_reads_connections: hooks_permissions,
    _mutate_operator_invokes_any_function: operator_permissions,
    _mutate_hooks_schedule_without_input: refresher_runs_alone_on_a_schedule,
    _mutate_refresher_invokes_any_function: refresher_permissions,
    _mutate_hooks_puts_lifecycle_events: lifecycle_event_rights,
    _mutate_hooks_route_throttled_like_the_callback: hooks_permissions,
    _mutate_access_log_holds_the_path: hooks_permissions,
    _mutate_wildcard_action: no_wildcard_actions_or_resources,
    _mutate_star_resource: no_wildcard_actions_or_resources,
    _mutate_callback_gets_sqs: callback_permissions,
    _mutate_refresher_sends_to_dlq: only_upsert_sends_to_sqs,
    _mutate_upsert_loses_leading_keys: upsert_permissions,
    _mutate_upsert_writes_items: upsert_permissions,
    _mutate_refresher_scan_under_condition: refresher_permissions,
    _mutate_refresher_scans_again: refresher_permissions,
    _mutate_refresher_queries_the_table: refresher_permissions,
    _mutate_refresher_scans_the_status_index: refresher_permissions,
    _mutate_refresher_deletes_connections: refresher_permissions,
    _mutate_refresher_queries_pending_links: refresher_permissions,
    _mutate_status_index_on_pk: indexes_are_sparse_as_designed,
    _mutate_callback_reads_tokens: callback_permissions,
    _mutate_callback_reads_whole_items: callback_permissions,
    _mutate_callback_write_returns_values: callback_permissions,
    _mutate_callback_reads_key_secrets: callback_permissions,
    _mutate_callback_starts_authorizations: callback_permissions,
    _mutate_callback_deletes_connections: callback_permissions,
    _mutate_callback_unkeyed_read: callback_permissions,
    _mutate_operator_behind_the_route: operator_is_not_public,
    _mutate_operator_scans: operator_permissions,
    _mutate_quota_overspent: keap_quota_is_budgeted,
    _mutate_refresher_rate_from_upsert_parameter: keap_quota_is_budgeted,
    _mutate_upsert_unbounded: keap_quota_is_budgeted,
    _mutate_reserved_at_queue_maximum: upsert_reserved_concurrency_above_queue_maximum,
    _mutate_other_stage_secret: policies_name_only_this_stacks_resources,
    _mutate_missing_env: environment_contract,
    _mutate_missing_global_env: environment_contract,
    _mutate_concurrency: refresher_runs_alone_on_a_schedule,
    _mutate_missing_data: alarms_watch_the_refresher,
    _mutate_short_lease: lease_outlives_every_holder,
    _mutate_longer_upsert: lease_outlives_every_holder,
    _mutate_metric_name: alarms_watch_the_refresher,
    _mutate_event_alarm_breaches: alarms_watch_the_refresher,
    _mutate_table_retain: table_is_safe,
    _mutate_table_ttl: table_is_safe,
    _mutate_table_pitr: table_is_safe,
    _mutate_visibility: upsert_queue_wiring,
    _mutate_standard_dead_letter_queue: upsert_queue_fifo_option,
    _mutate_content_based_deduplication: upsert_queue_fifo_option,
    _mutate_secret_value: client_secret_holds_no_credentials,
    _mutate_sam_http_api_cycle: no_circular_dependencies,
    _mutate_generated_role: functions_use_explicit_lambda_only_roles,
    _mutate_log_retention: log_groups_have_retention,
    _mutate_binary: functions_build_and_run_as_designed,
    _mutate_function_timeout: function_timeout_variable_equals_each_timeout,
    _mutate_callback_timeout_below_floor: presenters_have_time_to_store,
    _mutate_upsert_keap_timeout_too_long: presenters_have_time_to_store,
    _mutate_integration_timeout_implicit: callback_route_outlasts_the_function,
    _mutate_operator_write_returns_values: operator_permissions,
    _mutate_operator_reads_tokens: operator_permissions,
    _mutate_callback_writes_tombstones: callback_permissions,
    _mutate_proxy_gets_sqs: proxy_and_vending_permissions,
    _mutate_proxy_loses_leading_keys: proxy_and_vending_permissions,
    _mutate_vending_reads_key_secrets: proxy_and_vending_permissions,
    _mutate_vending_queries_the_index: proxy_and_vending_permissions,
    _mutate_proxy_on_a_schedule: proxy_and_vending_permissions,
    _mutate_callback_puts_any_lifecycle_event: lifecycle_event_rights,
    _mutate_refresher_puts_other_detail_types: lifecycle_event_rights,
    _mutate_operator_puts_any_source: lifecycle_event_rights,
    _mutate_upsert_puts_without_detail_type: lifecycle_event_rights,
    _mutate_proxy_quota_overspent: keap_quota_is_budgeted,
    _mutate_proxy_unbounded: keap_quota_is_budgeted,
    _mutate_vending_rate_raised: keap_quota_is_budgeted,
    _mutate_key_quota_overspent: key_quota_is_budgeted,
    _mutate_proxy_allowlist_always_set: environment_contract,
    _mutate_vending_timeout_below_floor: presenters_have_time_to_store,
    _mutate_proxy_alarm_missing: alarms_watch_functions_and_dead_letters,
}


# --------------------------------------------------------------------------- runner


# How a check ended on a template: it held, its assertion failed (it caught something), or it
# crashed (a KeyError on a missing resource, a TypeError on a reshaped property...).
HELD, CAUGHT, CRASHED = "held", "caught", "crashed"


def run_check(fn: Callable[[dict], None], t: dict) -> tuple[str, str]:
    try:
        fn(copy.deepcopy(t))
    except AssertionError as err:
        return CAUGHT, str(err) or "assertion failed"
    except Exception:
        return CRASHED, traceback.format_exc(limit=3)
    return HELD, ""


def failures(t: dict) -> list[tuple[str, str]]:
    """The checks that do not hold on `t`; on the real template a crash is as much a failure as a
    failed assertion."""
    out = []
    for fn in CHECKS:
        outcome, detail = run_check(fn, t)
        if outcome != HELD:
            out.append((fn.__name__, detail))
    return out


def mutant_verdict(mutant: Callable[[dict], None], expected: Callable[[dict], None], t: dict) -> str | None:
    """None when `expected` catches `mutant` with a failed assertion; otherwise why not. A check
    that crashes on the broken template has not recognised the breakage (it would crash the same
    way on any template it cannot read), so a crash is a failure of the check, never a catch."""
    broken = copy.deepcopy(t)
    try:
        mutant(broken)
    except Exception:
        return "the mutant itself crashed (the template changed shape?):\n" + traceback.format_exc(limit=3)
    outcome, detail = run_check(expected, broken)
    if outcome == CAUGHT:
        return None
    if outcome == CRASHED:
        return f"{expected.__name__} crashed on the broken template instead of failing an assertion:\n{detail}"
    return f"{expected.__name__} passes on the broken template"


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_TEMPLATE
    template = load(path)
    passed = failed = 0

    found = dict(failures(template))
    for fn in CHECKS:
        if fn.__name__ in found:
            failed += 1
            print(f"FAIL {fn.__name__}: {found[fn.__name__]}")
        else:
            passed += 1
            print(f"ok   {fn.__name__}")

    # The runner itself: a check that crashes on a mutant must not count as catching it.
    def _drop_resources(t: dict) -> None:
        t["Resources"] = None

    crash = mutant_verdict(_drop_resources, environment_contract, template)
    if crash is not None and "crashed" in crash:
        passed += 1
        print("ok   runner: a check crashing on a mutant is a failure, not a catch")
    else:
        failed += 1
        print(f"FAIL runner: a crashing check was counted as a catch ({crash!r})")

    for mutant, expected in MUTANTS.items():
        name = mutant.__name__.removeprefix("_mutate_")
        why_not = mutant_verdict(mutant, expected, template)
        if why_not is None:
            passed += 1
            print(f"ok   mutant {name} caught by {expected.__name__}")
        else:
            failed += 1
            print(f"FAIL mutant {name}: {why_not}")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
