"""One source per name: the metric names the alarms watch and the environment variables the
template sets come from the Rust sources, never from a list copied into a check.

- metrics: every name the Rust code emits (`Metrics::put("Name", ...)` and the `METRIC_*`
  constants in shared/src), in the namespace `METRICS_NAMESPACE` (shared/src/telemetry.rs);
- variables: `KNOWN_VARIABLES` in shared/src/config.rs (what `Config` accepts: any other
  `KEAPALIVE_*` name fails the init), the Keap endpoint variables it reads, and the variables it
  requires (`required("...")`), which every function must get.

Runs with the infra virtualenv's Python. Usage: python infra/checks/test_names.py [template]
Mutants below drift one side (the template or a Rust source); each must fail the check.
"""

from __future__ import annotations

import copy
import sys
import traceback
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rust_names import (  # noqa: E402  (after the path insert)
    CONFIG_RS, TELEMETRY_RS, rust_env_names, rust_metric_names, rust_metric_namespace,
    rust_required_env, rust_sources,
)
from test_template import (  # noqa: E402
    DEFAULT_TEMPLATE, FUNCTIONS, load, merged_function_props, resources,
)

def check(t: dict, sources: dict[str, str]) -> None:
    emitted = rust_metric_names(sources)
    namespace = rust_metric_namespace(sources)
    assert emitted, "no metric found in the Rust sources"
    for rid, alarm in resources(t, "AWS::CloudWatch::Alarm").items():
        p = alarm["Properties"]
        if p.get("Namespace", "").startswith("AWS/"):
            continue  # AWS's own metrics (Lambda Errors, SQS depth)
        assert p.get("Namespace") == namespace, f"{rid}: namespace {p.get('Namespace')} != {namespace}"
        assert p["MetricName"] in emitted, (
            f"{rid} watches {p['MetricName']}, which no Rust code emits (emitted: {sorted(emitted)})"
        )
    known, required = rust_env_names(sources), rust_required_env(sources)
    assert required, f"no required variable found in {CONFIG_RS}"
    for fid, name in FUNCTIONS.items():
        env = merged_function_props(t, fid).get("Environment", {}).get("Variables", {})
        unknown = set(env) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which Config does not know ({CONFIG_RS})"
        missing = required - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}, which Config requires"


# --------------------------------------------------------------------------- mutants


def _template_variable_misnamed(t: dict, s: dict) -> None:
    env = t["Resources"]["ContactUpsertFunction"]["Properties"]["Environment"]["Variables"]
    env["KEAPALIVE_LEASE_SEC"] = env.pop("KEAPALIVE_LEASE_SECS")


def _rust_variable_renamed(t: dict, s: dict) -> None:
    s[CONFIG_RS] = s[CONFIG_RS].replace('"KEAPALIVE_LEASE_SECS"', '"KEAPALIVE_LEASE_SECONDS"')


def _rust_requires_a_new_variable(t: dict, s: dict) -> None:
    s[CONFIG_RS] = s[CONFIG_RS].replace(
        'stage: get("KEAPALIVE_STAGE")', 'stage: required("KEAPALIVE_STAGE_NAME").ok()'
    )


def _alarm_metric_renamed(t: dict, s: dict) -> None:
    t["Resources"]["OldestRefreshAlarm"]["Properties"]["MetricName"] = "SecondsSinceLastRefresh"


def _rust_metric_renamed(t: dict, s: dict) -> None:
    path = "shared/src/refresh/scheduled.rs"
    assert '"SecondsSinceOldestRefresh"' in s[path]
    s[path] = s[path].replace('"SecondsSinceOldestRefresh"', '"SecondsSinceLastRefresh"')


def _rust_metric_constant_renamed(t: dict, s: dict) -> None:
    path = "shared/src/contact/keap_session.rs"
    s[path] = s[path].replace('= "UnauthorizedIncident"', '= "UnauthorizedIncidents"')


def _rust_namespace_renamed(t: dict, s: dict) -> None:
    s[TELEMETRY_RS] = s[TELEMETRY_RS].replace('= "Keapalive";', '= "KeapAlive";')


MUTANTS: list[Callable[[dict, dict], None]] = [
    _template_variable_misnamed,
    _rust_variable_renamed,
    _rust_requires_a_new_variable,
    _alarm_metric_renamed,
    _rust_metric_renamed,
    _rust_metric_constant_renamed,
    _rust_namespace_renamed,
]


def failure(t: dict, sources: dict[str, str]) -> str | None:
    try:
        check(copy.deepcopy(t), dict(sources))
    except AssertionError as err:
        return str(err) or "assertion failed"
    except Exception:  # a crash is a failure, never a pass
        return traceback.format_exc(limit=3)
    return None


def main(argv: list[str]) -> int:
    template = load(Path(argv[1]) if len(argv) > 1 else DEFAULT_TEMPLATE)
    sources = rust_sources()
    failed = 0
    found = failure(template, sources)
    if found:
        failed += 1
        print(f"FAIL names_come_from_the_rust_sources: {found}")
    else:
        print("ok   names_come_from_the_rust_sources")
    for mutant in MUTANTS:
        t, s = copy.deepcopy(template), dict(sources)
        mutant(t, s)
        caught = failure(t, s)
        name = mutant.__name__.lstrip("_")
        if caught:
            print(f"ok   mutant {name} caught: {caught.splitlines()[0]}")
        else:
            failed += 1
            print(f"FAIL mutant {name}: the check passes on the drifted names")
    print(f"{len(MUTANTS) + 1 - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
