import pytest

from common import budget


def test_quick_and_default(monkeypatch):
    monkeypatch.setenv("CVM_QUICK", "1")
    assert budget.is_quick() and budget.name() == "quick"
    assert budget.choose(default=10, quick=1) == 1
    assert "quick" in budget.describe()
    for off in ("0", "", "false"):
        monkeypatch.setenv("CVM_QUICK", off)
        assert not budget.is_quick()
        assert budget.choose(default=10, quick=1) == 10
    monkeypatch.delenv("CVM_QUICK")
    assert budget.name() == "default"


def test_unrecognised_value_is_an_error(monkeypatch):
    monkeypatch.setenv("CVM_QUICK", "maybe")
    with pytest.raises(ValueError, match="CVM_QUICK='maybe'"):
        budget.is_quick()


def test_suite_runs_in_quick_budget():
    # conftest sets it for the tests and, through the environment, for the notebook kernels
    assert budget.is_quick()


def test_report_names_the_budget_and_counts_wall_time(monkeypatch):
    import time
    monkeypatch.setenv("CVM_QUICK", "1")
    budget.start()
    time.sleep(0.05)
    assert 0.05 <= budget.elapsed() < 5
    line = budget.report()
    assert line.startswith("budget: quick | wall time") and " s (" in line and "min)" in line
    monkeypatch.setenv("CVM_QUICK", "0")
    assert budget.report().startswith("budget: default")
