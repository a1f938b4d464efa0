"""Issue 19, part 2: the ``run_hyper`` console script (recbole_llmesr.tuning), for plugin and RecBole models.

Every search trains for real on the tiny dataset, one epoch per trial; the interrupt test stands in only for the
keyboard (Ctrl-C during a real trial's training)."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from recbole_llmesr import tuning
from recbole_llmesr.cli.run_hyper import main
from recbole_llmesr.tuning import TuningError, grid, read_params_file


def overrides(tiny) -> list:
    return [f"--{k}={v}" for k, v in {**tiny["config"], "epochs": 1}.items()]


def hyper(tiny, params_file, *flags, model="LLMESR_SASRec") -> int:
    return main(["--model", model, "--dataset", "tiny", "--params_file", str(params_file), "--no_progress",
                 *flags, *overrides(tiny)])


def table_rows(path) -> list:
    lines = [line for line in Path(path).read_text().splitlines() if line.startswith("|")]

    def cells(line):
        return [c.strip() for c in line.strip().strip("|").split(" | ")]

    return [dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]]


def journal_trials(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()[1:]]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ params file
def test_params_file_reads_every_kind(tmp_path):
    path = write(tmp_path / "p.hyper", "# a comment\n\nlearning_rate choice [0.001, 0.01]\n"
                 "dropout_prob uniform 0.1,0.5\nweight_decay loguniform -9,-4   # exp(-9)..exp(-4)\n"
                 "hidden_size quniform 8,32,8\n"
                 "loss_type choice ['CE','BPR']\n")
    space = {p.name: p for p in read_params_file(path)}
    assert [(p.kind, p.values) for p in space.values()] == [
        ("choice", (0.001, 0.01)), ("uniform", (0.1, 0.5)), ("loguniform", (-9, -4)), ("quniform", (8, 32, 8)),
        ("choice", ("CE", "BPR"))]
    assert space["learning_rate"].where == f"{path}:3"
    assert space["hidden_size"].value(16.0) == 16 and isinstance(space["hidden_size"].value(16.0), int)
    assert space["loss_type"].value(1) == "BPR" and space["loss_type"].raw("BPR") == 1
    with pytest.raises(TuningError, match=rf"^{path}:4: 'dropout_prob uniform'.*exhaustive"):
        grid(list(space.values()))
    only_choices = [space["learning_rate"], space["loss_type"]]
    assert grid(only_choices) == [{"learning_rate": a, "loss_type": b} for a in (0.001, 0.01) for b in ("CE", "BPR")]


@pytest.mark.parametrize("line, why", [
    ("learning_rate choice", "expected 'name kind values'"),
    ("learning_rate pick [1,2]", "unknown kind 'pick'"),
    ("learning_rate choice [1,2", "cannot read"),
    ("learning_rate choice []", "non-empty list"),
    ("learning_rate uniform 0.1", "takes 2 numbers"),
    ("learning_rate quniform 1,8", "takes 3 numbers"),
    ("learning_rate uniform 0.5,0.1", "low < high"),
    ("learning_rate choice __import__('os')", "cannot read"),
])
def test_bad_params_line_names_file_and_line(tmp_path, line, why):
    path = write(tmp_path / "p.hyper", f"hidden_size choice [8]\n{line}\n")
    with pytest.raises(TuningError) as err:
        read_params_file(path)
    assert str(err.value).startswith(f"{path}:2: ") and why in str(err.value)


def test_bad_params_file_and_tool_are_one_line_errors(tiny, tmp_path, capsys):
    bad = write(tmp_path / "bad.hyper", "learning_rate choice [0.001]\nlearning_rate choice [0.01]\n")
    assert hyper(tiny, bad) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"run_hyper: error: {bad}:2: 'learning_rate' is already searched at {bad}:1"
    good = write(tmp_path / "p.hyper", "learning_rate choice [0.001]\n")
    assert hyper(tiny, good, "--tool=Ray") == 2
    assert "only Hyperopt" in capsys.readouterr().err
    assert hyper(tiny, good, "--epochs", "3") == 2  # a setting RecBole would ignore
    assert "--key=value" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real searches
def test_exhaustive_search_ranks_trials_writes_best_and_resumes(tiny, tmp_path, capsys):
    params = write(tmp_path / "lr.hyper", "learning_rate choice [0.001,0.005,0.01]\n")
    out = tmp_path / "lr.result"
    assert hyper(tiny, params, "--output_file", str(out)) == 0
    rows = table_rows(out)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    scores = [float(r["valid ndcg@10"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # valid_metric_bigger: best first
    assert sorted(json.loads(r["learning_rate"]) for r in rows) == [0.001, 0.005, 0.01]
    best = yaml.safe_load((tmp_path / "lr.best.yaml").read_text())
    assert best == {"learning_rate": json.loads(rows[0]["learning_rate"])}
    trials = journal_trials(tmp_path / "lr.result.journal.jsonl")
    assert [t["number"] for t in trials] == [1, 2, 3]
    assert max(t["score"] for t in trials) == scores[0] and "ndcg@10" in trials[0]["test_result"]
    shown = capsys.readouterr().out
    assert "3 trials run" in shown and f"best params: {best}" in shown.replace("\x1b[1;33m", "").replace("\x1b[0m", "")

    # The same command again: nothing retrains, the table stays.
    assert hyper(tiny, params, "--output_file", str(out)) == 0
    shown = capsys.readouterr().out
    assert "3 finished trials skipped" in shown and "0 trials run" in shown
    assert len(journal_trials(tmp_path / "lr.result.journal.jsonl")) == 3
    assert table_rows(out) == rows

    # best.yaml goes back in as a config file.
    from recbole_llmesr.config import LLMESRConfig

    config = LLMESRConfig("LLMESR_SASRec", "tiny", config_file_list=[str(tmp_path / "lr.best.yaml")],
                          config_dict=tiny["config"])
    assert config["learning_rate"] == best["learning_rate"]

    # Another model on this journal is refused, naming the journal.
    assert hyper(tiny, params, "--output_file", str(out), model="SASRec") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'lr.result.journal.jsonl'}: this journal belongs to another search (different model)" in err


def test_recbole_model_from_the_same_params_file(tiny, tmp_path, capsys):
    params = write(tmp_path / "lr.hyper", "learning_rate choice [0.001,0.005,0.01]\n")
    out = tmp_path / "sasrec.result"
    assert hyper(tiny, params, "--output_file", str(out), "--max_evals=2", model="SASRec") == 0
    rows = table_rows(out)
    assert [json.loads(r["learning_rate"]) for r in sorted(rows, key=lambda r: int(r["trial"]))] == [0.001, 0.005]
    assert "SASRec on tiny" in out.read_text() and "2 trials run" in capsys.readouterr().out


def test_random_search_runs_max_evals_and_continues(tiny, tmp_path, capsys):
    params = write(tmp_path / "mix.hyper", "learning_rate loguniform -7,-4\nn_layers choice [1,2]\n")
    out = tmp_path / "mix.result"
    assert hyper(tiny, params, "--algo=random", "--max_evals=2", "--output_file", str(out)) == 0
    first = journal_trials(tmp_path / "mix.result.journal.jsonl")
    assert len(first) == 2 and len(table_rows(out)) == 2
    for t in first:
        assert 0.0009 < t["params"]["learning_rate"] < 0.0184 and t["params"]["n_layers"] in (1, 2)
    capsys.readouterr()
    # A larger budget continues the same search: the first two trials stay, one more runs.
    assert hyper(tiny, params, "--algo=random", "--max_evals=3", "--output_file", str(out)) == 0
    again = journal_trials(tmp_path / "mix.result.journal.jsonl")
    assert again[:2] == first and len(again) == 3 and "1 trial run, 2 skipped" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ failures and resumption
def test_failed_trial_is_recorded_and_the_search_goes_on(tiny, tmp_path, capsys):
    # Real trials: the config check refuses alpha=-1 when that trial's configuration is built.
    params = write(tmp_path / "alpha.hyper", "alpha choice [0.1,-1.0,0.2]\n")
    out = tmp_path / "alpha.result"
    assert hyper(tiny, params, "--output_file", str(out)) == 0
    rows = table_rows(out)
    assert sorted(r["alpha"] for r in rows[:2]) == ["0.1", "0.2"] and all(r["status"] == "ok" for r in rows[:2])
    assert rows[2]["alpha"] == "-1.0" and rows[2]["status"].startswith("failed: ") and "alpha" in rows[2]["status"]
    assert "trial 2 failed: " in capsys.readouterr().out


def test_interrupt_keeps_the_journal(tiny, tmp_path, monkeypatch, capsys):
    # Ctrl-C lands in the middle of the second trial's training (its first optimiser step): the only stand-in
    # is the keyboard; the trials are real.
    step = torch.optim.Adam.step

    def interrupted(self, *args, **kwargs):
        if self.param_groups[0]["lr"] == 0.009:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted)
    params = write(tmp_path / "lr.hyper", "learning_rate choice [0.001,0.009,0.003]\n")
    out = tmp_path / "lr.result"
    assert hyper(tiny, params, "--output_file", str(out)) == 130
    assert "interrupted; the finished trials are kept in" in capsys.readouterr().err
    assert [t["params"] for t in journal_trials(tmp_path / "lr.result.journal.jsonl")] == [{"learning_rate": 0.001}]
    assert len(table_rows(out)) == 1


def test_early_stop_counts_trials_without_improvement(tiny, tmp_path):
    # A learning rate of 1e-9 leaves the model as initialised: after the trained first trial, each of those
    # trials is one without improvement, so the search stops after two of them.
    params = write(tmp_path / "lr.hyper", "learning_rate choice [0.005,1e-9,2e-9,3e-9,4e-9]\n")
    result = tuning.search("LLMESR_SASRec", "tiny", params, overrides={**tiny["config"], "epochs": 1},
                           early_stop=2, output_file=tmp_path / "lr.result", show_progress=False)
    assert [t.params["learning_rate"] for t in result.trials] == [0.005, 1e-9, 2e-9]
    assert result.stopped_early and result.best.params == {"learning_rate": 0.005}
    assert all(t.score <= result.best.score for t in result.trials[1:])


def test_bayes_search_continues_from_its_journal(tiny, tmp_path, capsys):
    params = write(tmp_path / "lr.hyper", "learning_rate uniform 0.001,0.01\n")
    out = tmp_path / "lr.result"
    assert hyper(tiny, params, "--algo=bayes", "--max_evals=2", "--output_file", str(out)) == 0
    first = journal_trials(tmp_path / "lr.result.journal.jsonl")
    assert len(first) == 2 and all(0.001 <= t["params"]["learning_rate"] <= 0.01 for t in first)
    capsys.readouterr()
    assert hyper(tiny, params, "--algo=bayes", "--max_evals=3", "--output_file", str(out)) == 0
    again = journal_trials(tmp_path / "lr.result.journal.jsonl")
    assert again[:2] == first and len(again) == 3 and "1 trial run, 2 skipped" in capsys.readouterr().out


def test_changed_search_is_refused_unless_fresh(tiny, tmp_path, capsys):
    out = tmp_path / "lr.result"
    journal = tmp_path / "lr.result.journal.jsonl"
    assert hyper(tiny, write(tmp_path / "a.hyper", "learning_rate choice [0.001]\n"), "--output_file", str(out)) == 0
    changed = write(tmp_path / "b.hyper", "learning_rate choice [0.003]\n")
    assert hyper(tiny, changed, "--output_file", str(out)) == 2
    assert capsys.readouterr().err.strip() == (
        f"run_hyper: error: {journal}: this journal belongs to another search (different params); pick another "
        f"--output_file, or pass --fresh to discard its trials")
    assert hyper(tiny, changed, "--output_file", str(out), "--fresh") == 0
    assert [t["params"]["learning_rate"] for t in journal_trials(journal)] == [0.003]
    journal.write_text(journal.read_text() + "{not json\n" + '{"number": 9, "params": {}}\n')
    assert hyper(tiny, changed, "--output_file", str(out)) == 2
    assert f"{journal}:3: unreadable journal line" in capsys.readouterr().err
