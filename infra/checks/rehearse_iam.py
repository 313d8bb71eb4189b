"""Deploy rehearsal, step 3: the roles are sufficient and no wider, judged on the walk.

The walk (tests/tests/it/rehearsal_walk.rs) runs every function binary against the rehearsed
stack, each signing with its own access key id, and records what each AWS request presents to
IAM (tests/emulator/moto_serialized.py, GET /_keapalive/requests/log). moto does not evaluate
IAM conditions, so this script does, for the subset of IAM's policy language the template uses:
Allow statements whose actions and resources match (wildcards as IAM's StringLike: `*`, `?`),
and the condition operators StringEquals / StringLike, their ForAllValues: / ForAnyValue: set
forms and the IfExists suffix, with IAM's semantics for a key the request does not carry
(ForAllValues: true, ForAnyValue: false, IfExists: true, plain: false). A TransactWriteItems is
authorized item by item, each as its own action (PutItem, UpdateItem, DeleteItem,
ConditionCheckItem) on its own key. A GetItem or Query without a projection reads every
attribute, so it cannot satisfy a dynamodb:Attributes list (modelled as an attribute no list
names).

Checks: every request of the walk is allowed by its function's role; every statement is needed
by some request (the step that needs it is printed), except the exempt ones below; and deleting
any one non-exempt statement makes a request of the walk denied (the mutant loop).

Usage: python infra/checks/rehearse_iam.py infra/template.yaml target/rehearse/requests.json
(the emulator venv's Python: cfn-lint, which test_template.py reads the template with, comes
with moto's CloudFormation support).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_template import FUNCTIONS, as_list, load, role_of, statements  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
PARTITION = "aws"
# Attributes of a read with no projection: every attribute, which no attribute list names.
EVERY_ATTRIBUTE = "*every attribute*"

# Statements the function's code never exercises, with why (the walk cannot need them).
EXEMPT = {
    "Logs": "Lambda's runtime writes the function's stdout to its log group with the role; "
    "the code makes no logs: request",
    "PublishMarks": "the functions that mark a connection needs_reauthorization put its event "
    "only when Keap rejects a grant, which the walk never makes it do (tests/tests/it/"
    "lifecycle_events.rs marks through the real token-refresher); infra/checks/test_template.py "
    "(lifecycle_event_rights) bounds the statement",
    "ManageHookSubscriptions": "the operator's hook commands reach Keap through keap-proxy, "
    "which the walk's emulator cannot run as a Lambda function; tests/tests/it/keap_hooks.rs "
    "runs them through the real binaries (the_operator_subscribes_lists_and_unsubscribes_"
    "through_keap_proxy); infra/checks/test_template.py (operator_permissions) bounds them",
    "FindHookSubscriptions": "as ManageHookSubscriptions",
    "CheckHookSubscriptions": "check_hooks reaches Keap through keap-proxy, which the walk's "
    "emulator cannot run as a Lambda function; tests/tests/it/keap_hooks.rs runs it through the "
    "real binaries (check_hooks_reverifies_an_inactive_subscription_and_publishes_the_gap)",
    "FindHookSubscriptionsToCheck": "as CheckHookSubscriptions",
    "ReachKeapHooksThroughTheProxy": "as CheckHookSubscriptions",
    "ReachKeapThroughTheProxy": "as ManageHookSubscriptions",
    "PublishLeftoversOfTombstones": "the refresher's sweep touches a tombstone only when a "
    "removal's writer died before publishing its events (tests/tests/it/lifecycle_events.rs "
    "kills one); the walk's removal publishes its own",
}


def resolve(value, stage: str, resources: dict) -> str:
    """A policy Resource value of the template, as the created stack has it."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return stage if value["Ref"] == "Stage" else resources[value["Ref"]]["ref"]
    if "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        logical, attribute = target if isinstance(target, list) else target.split(".", 1)
        assert attribute == "Arn", value
        return resources[logical]["arn"]
    if "Fn::Sub" in value:
        text = value["Fn::Sub"]
        assert isinstance(text, str), value
        fixed = {"AWS::Partition": PARTITION, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "Stage": stage}

        def one(match: re.Match) -> str:
            name = match.group(1)
            if name in fixed:
                return fixed[name]
            if name.endswith(".Arn"):
                return resources[name[: -len(".Arn")]]["arn"]
            return resources[name]["ref"]

        return re.sub(r"\$\{([^}]+)\}", one, text)
    raise ValueError(f"cannot resolve {value}")


class Request:
    """One authorization IAM makes: an action on a resource with condition-key values."""

    def __init__(self, record: dict, action: str, resource: str, context: dict) -> None:
        self.record, self.action, self.resource, self.context = record, action, resource, context

    def __str__(self) -> str:
        shown = {k: v for k, v in self.context.items() if v is not None}
        return f"{self.record['function']} {self.action} on {self.resource} {shown} (step {self.record['step']})"


def authorizations(record: dict, log: dict) -> list[Request]:
    """What IAM authorizes for one recorded request (a transaction: one per item)."""
    service, action = record["service"], record["action"]
    if service == "dynamodb":
        items = record.get("items")
        if action == "TransactWriteItems":
            return [
                Request(record, f"dynamodb:{item['action']}", table_arn(item["table"]),
                        {"dynamodb:LeadingKeys": item["key_prefixes"]})
                for item in items
            ]
        resource = table_arn(record["table"])
        if record.get("index"):
            resource += f"/index/{record['index']}"
        attributes = record.get("projection")
        if attributes is None and action in ("GetItem", "Query", "Scan", "BatchGetItem"):
            attributes = [EVERY_ATTRIBUTE]
        return [Request(record, f"dynamodb:{action}", resource, {
            "dynamodb:LeadingKeys": record["key_prefixes"] or None,
            "dynamodb:Attributes": attributes,
            "dynamodb:Select": record.get("select"),
            "dynamodb:ReturnValues": record.get("return_values"),
        })]
    if service == "secretsmanager":
        secret = record["secret"]
        arn = log["secrets"].get(secret, secret)
        assert arn.startswith("arn:"), f"secret {secret} has no known ARN"
        return [Request(record, f"secretsmanager:{action}", arn, {})]
    if service == "sqs":
        name = record["queue"].rstrip("/").rsplit("/", 1)[-1]
        return [Request(record, f"sqs:{action}", f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:{name}", {})]
    if service == "events" and action == "PutEvents":
        # One authorization per entry, with its source and detail-type as condition keys.
        return [
            Request(record, "events:PutEvents",
                    f"arn:{PARTITION}:events:{REGION}:{ACCOUNT}:event-bus/{entry['bus'] or 'default'}",
                    {"events:source": entry["source"], "events:detail-type": entry["detail_type"]})
            for entry in record.get("entries") or []
        ]
    raise ValueError(f"no IAM model for {service}:{action} (step {record['step']})")


def table_arn(name: str) -> str:
    return f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{name}"


def like(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def condition_holds(operator: str, key: str, allowed, context: dict) -> bool:
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    quantifier, _, base = base.rpartition(":")
    match = {"StringEquals": lambda p, v: p == v, "StringLike": like}.get(base)
    if match is None:
        raise ValueError(f"condition operator {operator} is not modelled")
    patterns = [str(p) for p in as_list(allowed)]
    values = context.get(key)
    if values is not None and not isinstance(values, list):
        values = [values]
    if quantifier == "ForAllValues":
        return not values or all(any(match(p, v) for p in patterns) for v in values)
    if quantifier == "ForAnyValue":
        return bool(values) and any(match(p, v) for p in patterns for v in values)
    assert quantifier == "", operator
    if not values:
        return if_exists
    return all(any(match(p, v) for p in patterns) for v in values)


def statement_allows(st: dict, request: Request, stage: str, resources: dict) -> bool:
    if not any(like(a.lower(), request.action.lower()) for a in as_list(st["Action"])):
        return False
    if not any(like(resolve(r, stage, resources), request.resource) for r in as_list(st["Resource"])):
        return False
    return all(
        condition_holds(operator, key, allowed, request.context)
        for operator, keys in st.get("Condition", {}).items()
        for key, allowed in keys.items()
    )


def evaluate(template: dict, log: dict) -> tuple[list[Request], dict[tuple[str, str], set[str]]]:
    """Denied authorizations, and for each (function, Sid) the steps it allowed something in."""
    roles = {name: role_of(template, fid) for fid, name in FUNCTIONS.items()}
    denied: list[Request] = []
    used: dict[tuple[str, str], set[str]] = defaultdict(set)
    for record in log["requests"]:
        role_statements = statements(template, roles[record["function"]])
        for request in authorizations(record, log):
            matching = [st for st in role_statements
                        if statement_allows(st, request, log["stage"], log["resources"])]
            if any(st["Effect"] == "Deny" for st in matching) or not any(
                st["Effect"] == "Allow" for st in matching
            ):
                denied.append(request)
            for st in matching:
                used[(record["function"], st["Sid"])].add(record["step"])
    return denied, used


def main(argv: list[str]) -> int:
    template = load(Path(argv[1]))
    log = json.loads(Path(argv[2]).read_text())
    failed = 0
    denied, used = evaluate(template, log)
    per_function = defaultdict(int)
    for record in log["requests"]:
        per_function[record["function"]] += 1
    print(f"{len(log['requests'])} requests of the walk: {dict(sorted(per_function.items()))}")
    for request in denied:
        failed += 1
        print(f"FAIL denied: {request}")

    all_sids = [(name, st["Sid"]) for fid, name in FUNCTIONS.items()
                for st in statements(template, role_of(template, fid))]
    covered = 0
    for name, sid in all_sids:
        steps = used.get((name, sid))
        if steps:
            covered += 1
            print(f"ok   {name} {sid}: needed by {', '.join(sorted(steps))}")
        elif sid in EXEMPT:
            print(f"ok   {name} {sid}: exempt ({EXEMPT[sid]})")
        else:
            failed += 1
            print(f"FAIL {name} {sid}: no request of the walk needs it (wider than the code, or a step is missing)")
    print(f"{covered} of {len(all_sids)} statements needed by the walk, "
          f"{sum(1 for _, s in all_sids if s in EXEMPT)} exempt")

    # The mutant loop: without any one needed statement, some request of the walk is denied.
    caught = 0
    for fid, name in FUNCTIONS.items():
        role = role_of(template, fid)
        for index, st in enumerate(statements(template, role)):
            if st["Sid"] in EXEMPT:
                continue
            broken = copy.deepcopy(template)
            for policy in broken["Resources"][role]["Properties"]["Policies"]:
                document = policy["PolicyDocument"]
                document["Statement"] = [s for s in as_list(document["Statement"]) if s.get("Sid") != st["Sid"]]
            mutant_denied, _ = evaluate(broken, log)
            if mutant_denied:
                caught += 1
            else:
                failed += 1
                print(f"FAIL mutant without {name} {st['Sid']}: every request of the walk still allowed")
    print(f"ok   {caught} mutants (one statement deleted each) deny a request of the walk")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
