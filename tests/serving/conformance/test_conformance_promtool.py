"""``promtool check metrics`` on real vLLM output (captured and live) and on every engine.

promtool exits 1 when it cannot parse an exposition and 3 when it only has lint findings.
Real vLLM gets lint findings (``:`` in its names, a histogram named ``..._total``); they are
recorded once in ``promtool_baseline.txt`` (fixture ``vllm_promtool_baseline`` in
tests/conftest.py) so that other expositions can be held to "no findings beyond vLLM's".
"""

from __future__ import annotations

import pytest

from tests.conftest import promtool_check
from tests.serving.conformance.conformance_reference import CAPTURES

PARSE_ERROR = 1
DUMPS = sorted(p.name for p in CAPTURES.glob("metrics_*.txt"))


@pytest.mark.parametrize("dump", DUMPS)
def test_captured_vllm_dump_parses_with_baseline_findings(vllm_promtool_baseline, dump):
    code, findings = promtool_check((CAPTURES / dump).read_text(encoding="utf-8"))
    assert code != PARSE_ERROR, findings
    assert set(findings) == vllm_promtool_baseline


def test_baseline_is_the_two_known_vllm_lint_rules(vllm_promtool_baseline):
    colon = {f for f in vllm_promtool_baseline if f.endswith("metric names should not contain ':'")}
    suffix = vllm_promtool_baseline - colon
    assert suffix == {
        'vllm:iteration_tokens_total non-counter metrics should not have "_total" suffix'
    }
    assert all(f.startswith("vllm:") for f in colon)


def test_live_metrics_parse_within_baseline(engine, client, vllm_promtool_baseline):
    code, findings = promtool_check(client.get("/metrics").text)
    assert code != PARSE_ERROR, findings
    beyond = sorted(set(findings) - vllm_promtool_baseline)
    assert beyond == [], f"{engine.name} has promtool findings real vLLM does not: {beyond}"
    if engine.name == "vllm":  # the baseline is exactly what live real vLLM gets
        assert code == 3
        assert set(findings) == vllm_promtool_baseline
