"""The files opsloop ships beside its code: topic catalog, site files, policy, DuckDB views, SOPs.

Only this module knows where they live, so code above the config floor asks for them
by name and an installed opsloop finds them as a checkout does.

>>> sorted(p.name for p in SITES_DIR.glob("*.yaml"))
['demo.yaml']
>>> "CREATE" in views_sql()
True
>>> len(sop_texts()) > 40
True
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
TOPICS_FILE = CONFIG_DIR / "topics.yaml"
SITES_DIR = CONFIG_DIR / "sites"
DEMO_SITE = SITES_DIR / "demo.yaml"
POLICY_FILE = CONFIG_DIR / "policy.yaml"
VIEWS_SQL = CONFIG_DIR / "views.sql"
SOP_DIR = CONFIG_DIR / "sops"
LOG_RULES_FILE = CONFIG_DIR / "log_rules.yaml"  # the logs source's default rules


def views_sql() -> str:
    """The DuckDB tables and views every NOC screen and SQL user reads."""
    return VIEWS_SQL.read_text(encoding="utf-8")


def sop_texts(directory: Path = SOP_DIR) -> dict[str, str]:
    """Each verified operating procedure's Markdown, by file name, in name order."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(directory).glob("*.md"))}
