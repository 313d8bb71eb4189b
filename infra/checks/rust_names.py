"""The names the Rust sources define, read from them: the metrics the code emits, the
environment variables `Config` accepts and requires. The infra checks use these instead of
copied lists (test_names.py proves the template against them; test_template.py uses them too).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

CONFIG_RS = "shared/src/config.rs"
TELEMETRY_RS = "shared/src/telemetry.rs"


def rust_sources() -> dict[str, str]:
    """Every Rust file of the library and the functions, relative path -> text."""
    out = {}
    for root in ("shared/src", "functions"):
        for path in sorted((REPO_ROOT / root).rglob("*.rs")):
            out[str(path.relative_to(REPO_ROOT))] = path.read_text()
    return out


def without_tests(text: str) -> str:
    """The file up to its `#[cfg(test)]` module: names in unit tests are not emitted."""
    return text.split("#[cfg(test)]", 1)[0]


def rust_metric_names(sources: dict[str, str]) -> set[str]:
    names: set[str] = set()
    for text in sources.values():
        code = without_tests(text)
        names |= set(re.findall(r'\.put\(\s*"([A-Za-z0-9]+)"', code))
        names |= set(re.findall(r'const METRIC_[A-Z0-9_]+: &str = "([A-Za-z0-9]+)"', code))
    return names


def rust_metric_namespace(sources: dict[str, str]) -> str:
    found = re.search(r'const METRICS_NAMESPACE: &str = "([^"]+)"', sources[TELEMETRY_RS])
    assert found, f"METRICS_NAMESPACE not found in {TELEMETRY_RS}"
    return found.group(1)


def rust_env_names(sources: dict[str, str]) -> set[str]:
    """What `Config` accepts: KNOWN_VARIABLES (constants resolved) and the Keap endpoints."""
    config = without_tests(sources[CONFIG_RS])
    block = re.search(r"KNOWN_VARIABLES: &\[&str\] = &\[(.*?)\];", config, re.S)
    assert block, f"KNOWN_VARIABLES not found in {CONFIG_RS}"
    names = set(re.findall(r'"([A-Z0-9_]+)"', block.group(1)))
    # Constants, by path (`crate::telemetry::X`) or declared in config.rs itself (`X`).
    for constant in re.findall(r"(?:crate::\w+::)?\b([A-Z][A-Z0-9_]+_VARIABLE)\b", block.group(1)):
        value = re.search(rf'const {constant}: &str = "([A-Z0-9_]+)"', "\n".join(sources.values()))
        assert value, f"{constant} (in KNOWN_VARIABLES) not found"
        names.add(value.group(1))
    names |= set(re.findall(r'url_or\("([A-Z0-9_]+)"', config))
    return names


def rust_required_env(sources: dict[str, str]) -> set[str]:
    return set(re.findall(r'required\("([A-Z0-9_]+)"\)', without_tests(sources[CONFIG_RS])))
