"""The README's generated sections match what the code and the spec say now."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _status_module():
    spec = importlib.util.spec_from_file_location("status_table", ROOT / "scripts" / "status_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _section(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:begin -->\n", 1)[1].split(f"\n<!-- {name}:end -->", 1)[0]


def test_readme_status_table_is_generated_from_the_code() -> None:
    st = _status_module()
    if not st.SPEC.exists():
        pytest.skip(f"spec not found at {st.SPEC} (CI and development checkouts have ../shared beside the repo)")
    readme = (ROOT / "README.md").read_text()
    assert _section(readme, "status") == st.table(), "README status table is stale: run scripts/status_table.py --write"


def test_spec_list_has_all_284_entries() -> None:
    st = _status_module()
    if not st.SPEC.exists():
        pytest.skip(f"spec not found at {st.SPEC}")
    names = [n for n, _ in st.spec_entries()]
    assert len(names) == 284
    assert "Adam" in names and "GramSchimdt" in names and "orthograd_" in names


def test_readme_cuda_line_is_the_last_cuda_check_result() -> None:
    last = ROOT / "docs" / "cuda-check-last.txt"
    readme = (ROOT / "README.md").read_text()
    assert _section(readme, "cuda") == f"> {last.read_text().strip()}"
