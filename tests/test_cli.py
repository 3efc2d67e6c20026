"""The command line: list, show, verify (exit status reflects failures)."""

import pytest
import sympy as sp

from unified_rlhf import __version__, cli, objectives
from unified_rlhf.custom import V, objective_from_sympy


def test_list_prints_every_objective(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in objectives.REGISTRY:
        assert f"\n{name} " in out
    assert "arXiv 2305.18290" in out


def test_show_reports_the_source_text_difference(capsys):
    assert cli.main(["show", "dpo"]) == 0
    out = capsys.readouterr().out
    assert "w+" in out and "differs" in out and "beta = 0.1" in out


def test_verify_named_methods_passes(capsys):
    assert cli.main(["verify", "dpo", "kto"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 3 and "2 passed, 0 failed" in out


def test_verify_unknown_name_lists_the_known_ones(capsys):
    assert cli.main(["verify", "dpoo"]) == 2
    err = capsys.readouterr().err
    assert "unknown objective 'dpoo'" in err and "simpo" in err


def test_verify_exits_non_zero_on_a_wrong_objective(capsys):
    wrong = objective_from_sympy("wrong_on_purpose", -sp.log(1 + sp.exp(-V.logp_chosen + V.logp_rejected)),
                                 closed_weights=[1, 1], register=True)
    try:
        assert cli.main(["verify", wrong.name]) == 1
        assert "FAIL" in capsys.readouterr().out
    finally:
        objectives.REGISTRY.pop(wrong.name)


def test_help_keeps_the_usage_lines_apart_and_version_is_printed(capsys):
    text = cli.build_parser().format_help()
    assert "\n  unified-rlhf list | show NAME" in text and "\n  unified-rlhf evaluate DIR\n" in text
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.strip() == f"unified-rlhf {__version__}"


def test_count_arguments_are_range_checked(capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "runs/x", "--prompts", "-3"])
    assert "--prompts: expected an integer >= 1, got -3" in capsys.readouterr().err
    assert cli._parse_value("inf") == float("inf") and cli._parse_value("nope") == "nope"
    assert cli._parse_value("false") is False and cli._parse_value("2.5") == 2.5
