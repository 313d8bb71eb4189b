"""Deploy waits for the tests: every deploy job of .github/workflows/deploy.yml transitively
needs a job that runs the reusable test workflow, and nothing on that chain can run past a
failed or skipped test.

Runs with the infra virtualenv's Python (PyYAML comes with cfn-lint).
Usage: python infra/checks/test_workflows.py [.github/workflows]

Each rule also runs against broken copies of the workflows (MUTANTS below): every broken copy
must fail the check, so a check that can no longer fail is itself a failure.
"""

from __future__ import annotations

import copy
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT / ".github" / "workflows"
TEST_WORKFLOW = {"./.github/workflows/test.yml", "$/.github/workflows/test.yml"}  # workspace-relative or self-repository form
# A status function in a job's `if:` lets it run although a job it needs failed or was skipped
# (GitHub: "Status check functions"; a job's implicit condition is success()).
RUNS_PAST_FAILURE = re.compile(r"\b(always|failure|cancelled)\s*\(")


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the bare key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def triggers(workflow: dict) -> set[str]:
    on = workflow.get("on")
    if isinstance(on, str):
        return {on}
    if isinstance(on, list):
        return set(on)
    return set(on or {})


def needs(job: dict) -> list[str]:
    value = job.get("needs", [])
    return [value] if isinstance(value, str) else list(value)


def is_deploy_job(job: dict) -> bool:
    """A job that deploys: it targets a GitHub environment or runs `make infra-deploy`."""
    steps = job.get("steps", [])
    return "environment" in job or any("infra-deploy" in str(s.get("run", "")) for s in steps)


def ancestors(jobs: dict, name: str) -> list[str]:
    """`name` and every job it transitively needs, in no particular order."""
    seen: list[str] = []
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        assert current in jobs, f"a job needs `{current}`, which does not exist"
        seen.append(current)
        pending.extend(needs(jobs[current]))
    return seen


def check(workflows: dict[str, dict]) -> None:
    deploy, test = workflows["deploy.yml"], workflows["test.yml"]
    assert "workflow_run" not in triggers(deploy), (
        "deploy.yml must not start from workflow_run: it deploys the default branch's head, "
        "not the commit that was tested"
    )
    assert "workflow_call" in triggers(test), "test.yml must be reusable (on: workflow_call)"
    for name, job in test["jobs"].items():
        assert "continue-on-error" not in job, f"test.yml job `{name}` has continue-on-error"
        assert not RUNS_PAST_FAILURE.search(str(job.get("if", ""))), (
            f"test.yml job `{name}`: if: {job['if']}"
        )
        for step in job.get("steps", []):
            assert "continue-on-error" not in step, (
                f"test.yml job `{name}`: a step with continue-on-error can fail while the job passes"
            )
    jobs = deploy["jobs"]
    test_jobs = {n for n, j in jobs.items() if j.get("uses") in TEST_WORKFLOW}
    assert test_jobs, f"deploy.yml has no job that uses .github/workflows/test.yml"
    deploy_jobs = [n for n, j in jobs.items() if is_deploy_job(j)]
    assert deploy_jobs, "deploy.yml has no deploy job (environment: or make infra-deploy)"
    for name in deploy_jobs:
        chain = ancestors(jobs, name)
        assert test_jobs & set(chain), f"deploy job `{name}` does not (transitively) need the test job"
        for link in chain:
            job = jobs[link]
            assert "continue-on-error" not in job, f"`{link}` (before `{name}`) has continue-on-error"
            condition = str(job.get("if", ""))
            assert not RUNS_PAST_FAILURE.search(condition), (
                f"`{link}` (before `{name}`) runs past a failed test: if: {condition}"
            )
    print(f"     deploy jobs {sorted(deploy_jobs)} each need {sorted(test_jobs)}")


# --------------------------------------------------------------------------- mutants


def _no_needs_on_package(w: dict) -> None:
    del w["deploy.yml"]["jobs"]["package"]["needs"]


def _package_always(w: dict) -> None:
    w["deploy.yml"]["jobs"]["package"]["if"] = "${{ always() }}"


def _dev_on_failure(w: dict) -> None:
    w["deploy.yml"]["jobs"]["deploy-dev"]["if"] = "${{ success() || failure() }}"


def _package_not_cancelled(w: dict) -> None:
    w["deploy.yml"]["jobs"]["package"]["if"] = "${{ !cancelled() }}"


def _package_continue_on_error(w: dict) -> None:
    w["deploy.yml"]["jobs"]["package"]["continue-on-error"] = True


def _test_step_continue_on_error(w: dict) -> None:
    w["test.yml"]["jobs"]["test"]["steps"][-1]["continue-on-error"] = True


def _workflow_run(w: dict) -> None:
    w["deploy.yml"]["on"] = {"workflow_run": {"workflows": ["test"], "types": ["completed"]}}
    del w["deploy.yml"]["jobs"]["test"]
    del w["deploy.yml"]["jobs"]["package"]["needs"]


def _test_not_reusable(w: dict) -> None:
    del w["test.yml"]["on"]["workflow_call"]


def _prod_skips_the_chain(w: dict) -> None:
    w["deploy.yml"]["jobs"]["deploy-prod"]["needs"] = []


MUTANTS: list[Callable[[dict], None]] = [
    _no_needs_on_package,
    _package_always,
    _dev_on_failure,
    _package_not_cancelled,
    _package_continue_on_error,
    _test_step_continue_on_error,
    _workflow_run,
    _test_not_reusable,
    _prod_skips_the_chain,
]


def failure(workflows: dict) -> str | None:
    try:
        check(copy.deepcopy(workflows))
    except AssertionError as err:
        return str(err) or "assertion failed"
    except Exception:  # a crash is a failure, never a pass
        return traceback.format_exc(limit=3)
    return None


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else DEFAULT_DIR
    workflows = {name: load(directory / name) for name in ("deploy.yml", "test.yml")}
    failed = 0
    found = failure(workflows)
    if found:
        failed += 1
        print(f"FAIL deploy_waits_for_the_tests: {found}")
    else:
        print("ok   deploy_waits_for_the_tests")
    for mutant in MUTANTS:
        broken = copy.deepcopy(workflows)
        name = mutant.__name__.lstrip("_")
        try:
            mutant(broken)
        except (KeyError, IndexError, TypeError) as err:
            failed += 1
            print(f"FAIL mutant {name}: cannot apply it to these workflows ({err!r})")
            continue
        caught = failure(broken)
        if caught:
            print(f"ok   mutant {name} caught: {caught.splitlines()[0]}")
        else:
            failed += 1
            print(f"FAIL mutant {name}: the check passes on the broken workflows")
    print(f"{len(MUTANTS) + 1 - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
