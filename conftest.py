"""Settings shared by the unit tests and the notebooks under nbval.

* nbval's kernels run with scripts/run_book.py's KERNEL_ENV (figures inline, one torch thread), so CI
  re-executes every chapter as `make book` executed it. nbval compares every text output of a chapter
  executed on this kind of machine (run_book.machine(), stored in the notebook), and elsewhere the
  derivation cells' outputs only (another CPU model rounds training runs differently); every cell runs,
  and every assert must hold, everywhere.
* The test processes use one torch thread as well: pytest-xdist runs one worker per core.
* `slow` marks the notebooks and the unit tests that take seconds (SECONDS below, measured with
  `pytest --durations=0 tests` on 2 CPU cores, one thread); `make check` runs the rest (-m "not slow").
* Under pytest-xdist (--dist loadfile: each file, and so each notebook's cells, stays on one worker)
  the longest files are handed out first, so that the two workers finish at about the same time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("run_book", ROOT / "scripts" / "run_book.py")
run_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_book)

# before torch is imported by any test: one thread per test process (pytest-xdist runs one per core)
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SLOW_SECONDS = 3.0
# Measured durations (setup + call + teardown, seconds) of the unit tests that take more than a second.
SECONDS = {
    "tests/test_trainer.py::test_resumed_run_matches_uninterrupted[kto]": 28.6,
    "tests/test_trainer.py::test_two_processes_match_one": 23.0,
    "tests/test_gpu_check.py::test_the_dry_run_writes_a_passing_report": 21.5,
    "tests/test_lora.py::test_the_policy_trains_adapters_and_the_reference_is_its_base": 5.1,
    "tests/test_trainer.py::test_resumed_run_matches_uninterrupted[dpo]": 14.9,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[kto]": 13.8,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[gpo_logistic]": 12.5,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[ipo]": 11.3,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[gpo_hinge]": 11.0,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[gpo_squared]": 9.3,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[cdpo]": 8.5,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[dpo]": 8.1,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[gpo_exponential]": 7.4,
    "tests/test_trainer.py::test_reference_log_probs_are_computed_once_and_aligned": 7.1,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[gpo_truncated_quadratic]": 7.1,
    "tests/test_trainer.py::test_logged_weights_follow_the_dpo_formula": 7.0,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[una_pairwise]": 7.0,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[una]": 7.0,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[gpo_savage]": 7.0,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[una_score]": 6.9,
    "tests/test_symbolic.py::test_prove_equal_catches_a_wrong_closed_form": 6.7,
    "tests/test_build.py::test_same_seed_same_files_and_no_silent_overwrite": 6.3,
    "tests/test_objectives.py::test_objective_verifies[grpo]": 4.4,
    "tests/test_objectives.py::test_objective_verifies[ppo_clip]": 4.0,
    "tests/test_objectives.py::test_objective_verifies[luspo]": 11.7,
    "tests/test_objectives.py::test_objective_verifies[gspo]": 8.9,
    "tests/test_objectives.py::test_objective_verifies[bnpo]": 8.1,
    "tests/test_objectives.py::test_objective_verifies[dr_grpo]": 7.0,
    "tests/test_objectives.py::test_objective_verifies[dapo]": 5.5,
    "tests/test_trainer.py::test_existing_run_is_refused_unless_resumed_or_overwritten": 3.6,
    "tests/test_book_site.py::test_every_page_loads_offline_with_math_figures_and_links": 60.3,
    "tests/test_book_site.py::test_screenshots_of_the_index_and_the_dpo_chapter": 3.0,
    "tests/test_book_outputs.py::test_run_book_executes_chapters_reproducibly": 8.0,
    "tests/test_book_outputs.py::test_training_outputs_are_compared_only_on_the_executing_machine": 11.0,
    "tests/test_objectives.py::test_objective_verifies[gpo_truncated_quadratic]": 2.8,
    "tests/test_trainer.py::test_cli_train_then_evaluate": 2.4,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[sft]": 2.3,
    "tests/test_compare.py::test_tiny_sweep_writes_table_and_figures_and_reuses_finished_points": 2.1,
    "tests/test_trainer.py::test_truncation_and_dropped_rows_are_counted": 1.5,
    "tests/test_objectives.py::test_objective_verifies[orpo]": 1.2,
    "tests/test_trainer.py::test_resumed_run_matches_uninterrupted[rloo]": 1.1,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[orpo]": 1.1,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[slic]": 1.1,
    "tests/test_trainer.py::test_every_method_takes_finite_steps[simpo]": 1.0,
    "tests/test_benchmarks.py::test_the_smoke_run_prints_every_side_and_column": 32.5,
    "tests/test_benchmarks.py::test_the_grpo_smoke_run_prints_every_side_part_and_setting": 10.3,
    "tests/test_packing.py::test_a_packed_run_resumes_exactly": 6.4,
    "tests/test_packing.py::test_packed_log_probs_and_dpo_gradients_equal_unpacked[gpt2]": 5.1,
    "tests/test_packing.py::test_the_trainers_packed_inputs_equal_unpacked[sft]": 5.1,
    "tests/test_packing.py::test_the_trainers_packed_inputs_equal_unpacked[kto]": 5.0,
    "tests/test_packing.py::test_the_trainers_packed_inputs_equal_unpacked[dpo]": 3.9,
    "tests/test_packing.py::test_the_trainers_packed_inputs_equal_unpacked[una_score]": 3.9,
    "tests/test_packing.py::test_packing_computes_far_fewer_padding_tokens_on_the_books_pairs": 2.8,
    "tests/test_packing.py::test_the_trainers_packed_inputs_equal_unpacked[crlft]": 2.3,
    "tests/test_packing.py::test_the_trainers_packed_inputs_equal_unpacked[rrhf]": 1.4,
}
OTHER_TEST_SECONDS = 0.05


def pytest_addoption(parser):
    parser.addoption("--data-build", action="store_true",
                     help="run the tests marked data_build: a full `data build` (about 11 minutes), "
                          "compared byte for byte with the committed data/ (make check-data)")


def pytest_configure(config):  # the `slow` and `data_build` markers are declared in pyproject.toml
    if config.pluginmanager.hasplugin("nbval"):
        _give_nbval_kernels_the_book_environment()


def _give_nbval_kernels_the_book_environment():
    """nbval starts its kernels with this process's environment: add KERNEL_ENV to it (MPLBACKEND=Agg, say,
    which suits the tests in this process, would keep the chapters' figures out of their outputs)."""
    import nbval.kernel

    start = nbval.kernel.start_new_kernel
    if getattr(start, "book_environment", False):
        return

    def start_new_kernel(*args, **kwargs):
        kwargs.setdefault("env", run_book.kernel_environment())
        return start(*args, **kwargs)

    start_new_kernel.book_environment = True
    nbval.kernel.start_new_kernel = start_new_kernel


def pytest_report_header(config):
    if not (config.pluginmanager.hasplugin("nbval") and (config.option.nbval or config.option.nbval_lax)):
        return None
    here = run_book.machine()
    executed_on = {path.name: _executed_on(path) for path in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    same = sum(machine == here for machine in executed_on.values())
    elsewhere = sorted({machine or "no machine recorded" for machine in executed_on.values() if machine != here})
    return [f"this machine: {here}",
            f"chapters executed on it: {same} of {len(executed_on)} (every text output compared)",
            f"the other {len(executed_on) - same} ({'; '.join(elsewhere) or '-'}): every cell run and every assert "
            f"checked, the derivation cells' outputs compared"]


def _executed_on(path: Path) -> str | None:
    import json

    return json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("unified_rlhf", {}).get("executed_on")


def pytest_collection_modifyitems(config, items):
    here = run_book.machine() if any(item.path.suffix == ".ipynb" for item in items) else None
    for item in items:  # nbval's cells: which ones have their printed outputs compared (run_book.outputs_compared)
        if item.path.suffix == ".ipynb" and hasattr(item, "options") and hasattr(item, "cell"):
            executed_on = item.parent.nb.metadata.get("unified_rlhf", {}).get("executed_on")
            if not run_book.outputs_compared(item.cell.source, executed_on, here):
                item.options["check"] = False

    if not config.getoption("--data-build"):  # deselected, not skipped: they run under `make check-data`
        deselected = [item for item in items if item.get_closest_marker("data_build")]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker("data_build")]
    files: dict[Path, float] = {}
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
            files[item.path] = run_book.budget(item.path)
        else:
            seconds = SECONDS.get(item.nodeid, OTHER_TEST_SECONDS)
            if seconds >= SLOW_SECONDS:
                item.add_marker(pytest.mark.slow)
            files[item.path] = files.get(item.path, 0.0) + seconds
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller schedules files in this order
        first = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
        items.sort(key=lambda item: (-files[item.path], first[item.path]))
