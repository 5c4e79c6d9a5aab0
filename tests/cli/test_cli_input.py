"""Bad input to `rstar solve` ends in one clear line and exit code 2, before any model loads."""

import json

import pytest

from rstar_cli.main import main
from rstar_cli.problems import load_problems


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _write(tmp_path, lines):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("lines,expected", [
    (['{"question": "1+1?", "answer": "2"}', '{"answer": "3"}'], "p.jsonl:2: missing field 'question'"),
    (['{"question": "1+1?"}', '{"question": "2+2?"', '{"question": "x"}'], "p.jsonl:2: invalid JSON"),
    (['{"question": ""}'], "p.jsonl:1: field 'question' must be a non-empty string"),
    (['{"question": "q", "answer": {"a": 1}}'], "p.jsonl:1: field 'answer' must be"),
    (['["not", "an", "object"]'], "p.jsonl:1: expected a JSON object"),
])
def test_bad_problem_file(tmp_path, capsys, lines, expected):
    code, err = _run(capsys, "solve", "--file", _write(tmp_path, lines))
    assert code == 2 and len(err) == 1
    assert err[0].startswith("rstar: error: ") and expected in err[0]


def test_unknown_config_key(tmp_path, capsys):
    code, err = _run(capsys, "solve", "What is 1+1?", "--set", "rollout=3")
    assert code == 2 and len(err) == 1 and "unknown config key(s) rollout" in err[0]


def test_negative_rollouts(capsys):
    code, err = _run(capsys, "solve", "What is 1+1?", "--rollouts", "-2")
    assert code == 2 and "rollouts must be a positive integer" in err[0]


def test_missing_config_file(capsys):
    code, err = _run(capsys, "solve", "What is 1+1?", "--config", "/nope/x.yaml")
    assert code == 2 and "config file not found: /nope/x.yaml" in err[0]


def test_question_and_file_are_exclusive(tmp_path, capsys):
    code, err = _run(capsys, "solve", "q?", "--file", _write(tmp_path, ['{"question": "q"}']))
    assert code == 2 and "either a question or --file" in err[0]


def test_missing_file(capsys):
    code, err = _run(capsys, "solve", "--file", "/nope/p.jsonl")
    assert code == 2 and "file not found" in err[0]


def test_json_array_files_and_ids(tmp_path, data_dir):
    problems = load_problems(data_dir / "eval" / "GSM8K_test.json", limit=3)
    assert [p.id for p in problems] == ["0", "1", "2"] and problems[0].answer == "18"
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"question": "q1", "answer": ["1", "one"]}) + "\n\n" + json.dumps({"question": "q2"}))
    loaded = load_problems(path)
    assert [p.id for p in loaded] == ["0", "1"] and loaded[0].answer == ["1", "one"]


def test_enqueue_validates_the_whole_file_before_touching_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RSTAR_DATABASE_URL", f"sqlite:///{tmp_path}/never-created.db")
    path = _write(tmp_path, ['{"question": "1+1?"}', '{"question": "2+2?"}', '{"answer": "x"}'])
    code, err = _run(capsys, "enqueue", path, "--run", "r")
    assert code == 2 and "p.jsonl:3: missing field 'question'" in err[0]
    assert not (tmp_path / "never-created.db").exists()


def test_status_of_unknown_run_and_unreachable_database(tmp_path, capsys, monkeypatch):
    from rstar_store import migrate

    url = f"sqlite:///{tmp_path}/rstar.db"
    migrate(url)
    monkeypatch.setenv("RSTAR_DATABASE_URL", url)
    code, err = _run(capsys, "status", "nope")
    assert code == 2 and len(err) == 1 and "nope" in err[0]
    monkeypatch.setenv("RSTAR_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/rstar_no_such_db")
    code, err = _run(capsys, "status", "nope")
    assert code == 2 and "cannot use the database" in err[0] and "rstar_no_such_db" in err[0]


def test_recipe_name_wins_over_a_directory_of_that_name(tmp_path, capsys, monkeypatch):
    # As in the repository root, where `bench/` exists beside the `bench` recipe.
    (tmp_path / "bench").mkdir()
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, "solve", "What is 1+1?", "--config", "bench", "--rollouts", "0")
    # The recipe was read: its validation, not the directory, stopped the command.
    assert code == 2 and len(err) == 1
    assert "configs/bench.yaml: rollouts must be a positive integer" in err[0]


@pytest.mark.parametrize("config,expected", [
    ("no-such-recipe", "unknown config 'no-such-recipe': give a recipe name (bench,"),
    ("{tmp}/dir.yaml", "is a directory, not a YAML file"),
])
def test_bad_config_is_one_line(tmp_path, capsys, config, expected):
    (tmp_path / "dir.yaml").mkdir()
    code, err = _run(capsys, "solve", "q?", "--config", config.format(tmp=tmp_path))
    assert code == 2 and len(err) == 1 and expected in err[0]


def test_problem_file_that_is_a_directory_is_one_line(tmp_path, capsys):
    code, err = _run(capsys, "solve", "--file", str(tmp_path))
    assert code == 2 and len(err) == 1 and "is a directory, not a problem file" in err[0]


@pytest.mark.parametrize("name,text", [
    ("p.jsonl", '{"question": "1+1?", "answer": "2", "id": "a"}\n'),
    ("p.json", '[{"question": "1+1?", "answer": "2", "id": "a"}]'),
])
def test_problem_file_with_a_utf8_bom_is_read(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # as spreadsheet and Windows tools save
    [problem] = load_problems(path)
    assert (problem.question, problem.answer, problem.id) == ("1+1?", "2", "a")


def test_enqueue_says_how_many_duplicates_it_merged(tmp_path, capsys, monkeypatch):
    from rstar_store import migrate
    from rstar_worker.app import app

    url = f"sqlite:///{tmp_path}/rstar.db"
    migrate(url)
    monkeypatch.setenv("RSTAR_DATABASE_URL", url)
    published = []
    # Keep the test off the shared broker: record what would be sent.
    monkeypatch.setattr(app, "send_task", lambda name, args, **kw: published.append(args))
    (tmp_path / "bench").mkdir()  # the recipe still wins (the README's example)
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, ['{"question": "1+1?", "answer": "2", "id": "a"}'] * 2)

    code = main(["enqueue", path, "--run", "r", "--config", "bench"])

    out = capsys.readouterr().out
    assert code == 0
    assert ("2 problems (1 duplicate id merged: identical records count once), 1 new task, "
            "1 published") in out
    assert len(published) == 1
