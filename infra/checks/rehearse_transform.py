"""Deploy rehearsal, step 1 (the SAM venv's Python: aws-sam-translator and sam's YAML reader):
apply the rehearsal overlay to infra/template.yaml, then run the SAM transform as `sam deploy`
has CloudFormation do, and write the plain CloudFormation template.

Usage: python infra/checks/rehearse_transform.py TEMPLATE OUT.json

The overlay (docs/deploy.md, "Deploy rehearsal") replaces what moto 5.2.5's CloudFormation does
not create: its parser knows only the types whose models define `cloudformation_type()`, and
skips any other with a warning (moto/cloudformation/parsing.py, `parse_resource`). Not among
them: AWS::SecretsManager::Secret, AWS::ApiGatewayV2::*, AWS::CloudWatch::Alarm,
AWS::SNS::Subscription, AWS::Lambda::EventInvokeConfig. Each substituted resource is checked
statically by infra/checks/test_template.py instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from samcli.yamlhelper import yaml_parse
from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
from samtranslator.translator.transform import transform

# The client secret is pre-created in the emulator and passed by ARN; the callback API's
# endpoint is the rehearsal's local HTTP front.
SECRET_PARAMETER = "RehearsalClientSecretArn"
ENDPOINT_PARAMETER = "RehearsalCallbackEndpoint"
CODE_BUCKET = "keapalive-rehearsal-code"
UNSUPPORTED = (
    "AWS::SecretsManager::Secret",
    "AWS::ApiGatewayV2::",
    "AWS::CloudWatch::Alarm",
    "AWS::SNS::Subscription",
)


def replace(value, old_ref: str, new):
    """`value` with every Ref to `old_ref` and every ${old_ref.ApiEndpoint} rewritten."""
    if isinstance(value, dict):
        if value == {"Ref": old_ref}:
            return new
        if "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
            text = value["Fn::Sub"].replace(f"${{{old_ref}.ApiEndpoint}}", f"${{{ENDPOINT_PARAMETER}}}")
            return {"Fn::Sub": text}
        return {k: replace(v, old_ref, new) for k, v in value.items()}
    if isinstance(value, list):
        return [replace(v, old_ref, new) for v in value]
    return value


def overlay(t: dict) -> dict:
    resources = t["Resources"]
    removed = [rid for rid, r in resources.items() if r["Type"].startswith(UNSUPPORTED)]
    # The callback's invoke permission names the API; API Gateway is the local front here.
    removed += [
        rid for rid, r in resources.items()
        if r["Type"] == "AWS::Lambda::Permission" and "CallbackApi" in json.dumps(r)
    ]
    for rid in removed:
        del resources[rid]
    t["Parameters"][SECRET_PARAMETER] = {"Type": "String"}
    t["Parameters"][ENDPOINT_PARAMETER] = {"Type": "String"}
    t = replace(t, "OAuthClientSecret", {"Ref": SECRET_PARAMETER})
    t = replace(t, "CallbackApi", {"Ref": ENDPOINT_PARAMETER})
    # Outputs name the removed resources; the rehearsal reads resources, not outputs.
    t.pop("Outputs", None)
    for rid, r in t["Resources"].items():
        if r["Type"] == "AWS::Serverless::Function":
            # What `sam package` does: the code is an S3 object (the rehearsal runs the host's
            # debug binaries; the zip only has to exist).
            r["Properties"]["CodeUri"] = f"s3://{CODE_BUCKET}/{r['Metadata']['BuildProperties']['Binary']}.zip"
            # Lambda::EventInvokeConfig is not a moto type; checked statically.
            r["Properties"].pop("EventInvokeConfig", None)
    print(f"overlay: removed {sorted(removed)}; secret and API endpoint are parameters")
    return t


class NoManagedPolicies(ManagedPolicyLoader):
    def __init__(self) -> None:  # every role is explicit: no AWS managed policy to look up
        pass

    def load(self):
        return {}


def main(argv: list[str]) -> int:
    template = yaml_parse(Path(argv[1]).read_text())
    transformed = transform(overlay(template), {}, NoManagedPolicies())
    Path(argv[2]).write_text(json.dumps(transformed, indent=1, default=str))
    kinds = sorted({r["Type"] for r in transformed["Resources"].values()})
    print(f"transformed: {len(transformed['Resources'])} resources of types {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
