"""Deploy rehearsal, step 2 (the emulator venv's Python: the same moto as the tests): create the
transformed stack in moto's CloudFormation, then check what the created stack gives each
function: its environment names only variables `Config` knows and carries the ones it requires,
and its table, index, secret and queue names resolve to resources the stack (or the overlay)
created, with the indexes the Rust code queries.

Usage: python infra/checks/rehearse_stack.py STACK.json OUT-ENV.json
Writes {function name: environment}, then runs the mutants (each broken copy must fail).

Walk mode (tests/tests/it/rehearsal_walk.rs): the same stack created in a running moto server
(the test emulator), whose CloudFormation creates it in the same backends the functions then
call (moto's server mode serves every service, CloudFormation included, from one process and
one state: moto's docs/docs/server_mode.rst; moto/moto_server/werkzeug_app.py dispatches each
request to its service's backend):
  python infra/checks/rehearse_stack.py --endpoint URL --stage STAGE --callback-endpoint URL \
      STACK.json OUT.json
Writes {"stage", "functions": {name: {"function_name", "env"}}, "resources": {logical id:
{"ref", "arn"}}} for the walk and for infra/checks/rehearse_iam.py.
"""

from __future__ import annotations

import io
import json
import re
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rust_names  # noqa: E402

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

REGION = "us-east-1"
STAGE = "rehearsal"
ENDPOINT = "http://127.0.0.1:8787"  # the local HTTP front standing in for the callback API
CODE_BUCKET = "keapalive-rehearsal-code"
MODEL_RS = "shared/src/token_store/model.rs"
HOOKS_RS = "shared/src/token_store/hooks.rs"


def rust_indexes(sources: dict[str, str]) -> dict[str, str]:
    found = {}
    for path in (MODEL_RS, HOOKS_RS):
        found.update(re.findall(
            r'pub const (STATUS_INDEX|PENDING_INDEX|HOOK_INDEX): &str = "([^"]+)"', sources[path]))
    assert set(found) == {"STATUS_INDEX", "PENDING_INDEX", "HOOK_INDEX"}, (
        f"index names not found in {MODEL_RS} and {HOOKS_RS}"
    )
    return found


class Session:
    """boto3 clients: in-process moto (mock_aws), or a moto server at `endpoint`."""

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        self.session = boto3.session.Session(
            region_name=REGION,
            aws_access_key_id="keapalive-test" if endpoint else None,
            aws_secret_access_key="keapalive-test" if endpoint else None,
        )

    def client(self, service: str):
        return self.session.client(service, endpoint_url=self.endpoint)


def create(
    template: dict, session: Session | None = None, stage: str = STAGE, endpoint: str = ENDPOINT
) -> tuple[dict[str, dict[str, str]], dict]:
    """Creates the stack; returns ({function: environment}, what the walk needs)."""
    session = session or Session()
    stack_name = f"keapalive-{stage}"
    s3, secrets = session.client("s3"), session.client("secretsmanager")
    cfn, lam = session.client("cloudformation"), session.client("lambda")
    ddb, sqs = session.client("dynamodb"), session.client("sqs")
    s3.create_bucket(Bucket=CODE_BUCKET)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    for r in template["Resources"].values():
        if r["Type"] == "AWS::Lambda::Function":
            s3.put_object(Bucket=CODE_BUCKET, Key=r["Properties"]["Code"]["S3Key"], Body=zipped.getvalue())
    # The overlay: the secret the stack would create, pre-created and passed by ARN.
    secret_arn = secrets.create_secret(
        Name=f"keapalive-{stage}-client", SecretString='{"client_id":"","client_secret":""}'
    )["ARN"]
    cfn.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(template),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[
            {"ParameterKey": "Stage", "ParameterValue": stage},
            {"ParameterKey": "Architecture", "ParameterValue": "x86_64"},
            {"ParameterKey": "RehearsalClientSecretArn", "ParameterValue": secret_arn},
            {"ParameterKey": "RehearsalCallbackEndpoint", "ParameterValue": endpoint},
        ],
    )
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", f"stack {stack['StackStatus']}: {stack.get('StackStatusReason')}"
    created = cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    print(f"created {len(created)} resources in moto's CloudFormation")

    sources = rust_names.rust_sources()
    known, required = rust_names.rust_env_names(sources), rust_names.rust_required_env(sources)
    indexes = rust_indexes(sources)
    tables = {r["PhysicalResourceId"] for r in created if r["ResourceType"] == "AWS::DynamoDB::Table"}
    envs: dict[str, dict[str, str]] = {}
    function_names: dict[str, str] = {}
    for r in created:
        if r["ResourceType"] != "AWS::Lambda::Function":
            continue
        config = lam.get_function_configuration(FunctionName=r["PhysicalResourceId"])
        name = config["FunctionName"].removeprefix(f"keapalive-{stage}-")
        function_names[name] = config["FunctionName"]
        env = config.get("Environment", {}).get("Variables", {})
        unknown = set(env) - known
        assert not unknown, f"{name}: the stack sets {sorted(unknown)}, which Config does not know"
        missing = required - set(env)
        assert not missing, f"{name}: the stack does not set {sorted(missing)}, which Config requires"
        assert env["KEAPALIVE_TABLE"] in tables, f"{name}: KEAPALIVE_TABLE {env['KEAPALIVE_TABLE']} is no table of the stack"
        assert env["KEAPALIVE_CLIENT_SECRET_ID"] == secret_arn, f"{name}: KEAPALIVE_CLIENT_SECRET_ID"
        table = ddb.describe_table(TableName=env["KEAPALIVE_TABLE"])["Table"]
        have = {g["IndexName"] for g in table.get("GlobalSecondaryIndexes", [])}
        lacking = set(indexes.values()) - have
        assert not lacking, f"{name}: table {table['TableName']} lacks the index(es) {sorted(lacking)} the Rust code queries"
        if "KEAPALIVE_DEAD_LETTER_QUEUE_URL" in env:
            url = env["KEAPALIVE_DEAD_LETTER_QUEUE_URL"]
            # By name: a moto server answers URLs with its own host, the stack's Ref with SQS's.
            queues = {u.rsplit("/", 1)[-1] for u in sqs.list_queues().get("QueueUrls", [])}
            assert url.rsplit("/", 1)[-1] in queues, f"{name}: no queue {url}"
        if "KEAPALIVE_REDIRECT_URI" in env:
            assert env["KEAPALIVE_REDIRECT_URI"] == f"{endpoint}/oauth/callback", env["KEAPALIVE_REDIRECT_URI"]
        envs[name] = env
        print(f"ok   {name}: {len(env)} variables, all known to Config, table {table['TableName']} with {sorted(have)}")
    assert set(envs) == {
        "oauth-callback", "operator", "token-refresher", "contact-upsert", "keap-proxy", "access-token",
        "keap-hooks",
    }, sorted(envs)
    return envs, {
        "stage": stage,
        "functions": {n: {"function_name": function_names[n], "env": e} for n, e in envs.items()},
        "resources": resolved_resources(session, created, secret_arn, stage),
    }


def resolved_resources(session: Session, created: list[dict], secret_arn: str, stage: str) -> dict:
    """Ref and Arn of the resources the roles name, as the created stack (or overlay) has them."""
    ddb, sqs, logs = session.client("dynamodb"), session.client("sqs"), session.client("logs")
    out = {"OAuthClientSecret": {"ref": secret_arn, "arn": secret_arn}}
    for r in created:
        physical, kind = r["PhysicalResourceId"], r["ResourceType"]
        if kind == "AWS::DynamoDB::Table":
            arn = ddb.describe_table(TableName=physical)["Table"]["TableArn"]
        elif kind == "AWS::SQS::Queue":
            arn = sqs.get_queue_attributes(QueueUrl=physical, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        elif kind == "AWS::Events::EventBus":
            # moto's CloudFormation gives a bus no physical id: it is the template's keapalive-<stage>.
            physical = physical or f"keapalive-{stage}"
            arn = session.client("events").describe_event_bus(Name=physical)["Arn"]
        elif kind == "AWS::Logs::LogGroup":
            groups = logs.describe_log_groups(logGroupNamePrefix=physical)["logGroups"]
            arn = next(g["arn"] for g in groups if g["logGroupName"] == physical)
        else:
            continue
        out[r["LogicalResourceId"]] = {"ref": physical, "arn": arn}
    return out


def _function(t: dict, logical_id: str) -> dict:
    return t["Resources"][logical_id]["Properties"]


def _misnamed_variable(t: dict) -> None:
    env = _function(t, "ContactUpsertFunction")["Environment"]["Variables"]
    env["KEAPALIVE_LEASE_SEC"] = env.pop("KEAPALIVE_LEASE_SECS")


def _missing_index(t: dict) -> None:
    indexes = _function(t, "ConnectionsTable")["GlobalSecondaryIndexes"]
    indexes[:] = [i for i in indexes if i["IndexName"] != "pending-by-connection"]


def _missing_required_variable(t: dict) -> None:
    del _function(t, "TokenRefresherFunction")["Environment"]["Variables"]["KEAPALIVE_TABLE"]


# Each broken copy of the transformed template must fail the rehearsal.
MUTANTS = [_misnamed_variable, _missing_index, _missing_required_variable]


def rehearse(template: dict) -> tuple[dict | None, str | None]:
    with mock_aws():
        try:
            return create(template)[0], None
        except AssertionError as err:
            return None, str(err)


def walk_mode(argv: list[str]) -> int:
    """Creates the stack in the moto server the walk's functions call (no mutants here)."""
    options = dict(zip(argv[0::2], argv[1::2]))
    template = json.loads(Path(argv[-2]).read_text())
    session = Session(options["--endpoint"])
    # The walk plays Lambda's SQS poller itself, signing as contact-upsert (the function's role
    # is what the poller uses): moto's own poller would run the function in Docker.
    _, walk = create(template, session, options["--stage"], options["--callback-endpoint"])
    lam = session.client("lambda")
    for mapping in lam.list_event_source_mappings()["EventSourceMappings"]:
        if mapping["FunctionArn"].endswith(f":keapalive-{options['--stage']}-contact-upsert"):
            lam.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
    Path(argv[-1]).write_text(json.dumps(walk, indent=1, sort_keys=True))
    return 0


def main(argv: list[str]) -> int:
    if "--endpoint" in argv:
        return walk_mode(argv[1:])
    template = json.loads(Path(argv[1]).read_text())
    envs, error = rehearse(template)
    if error:
        print(f"FAIL rehearsal: {error}")
        return 1
    Path(argv[2]).write_text(json.dumps(envs, indent=1, sort_keys=True))
    print(f"rehearsal stack ok; the environments are in {argv[2]}")
    failed = 0
    for mutant in MUTANTS:
        broken = json.loads(json.dumps(template))
        mutant(broken)
        _, error = rehearse(broken)
        name = mutant.__name__.lstrip("_")
        if error:
            print(f"ok   mutant {name} caught: {error}")
        else:
            failed += 1
            print(f"FAIL mutant {name}: the rehearsal passes on the broken stack")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
