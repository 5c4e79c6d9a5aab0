"""`rstar data practice` and `rstar data bootstrap`, called through their own subparser."""

import argparse
import hashlib
import json

import pytest

from rstar_cli.data_cmd import add_data_parser, parse_levels, read_gsm8k
from rstar_cli.main import UsageError

# gsm8k_train.jsonl lines 0 and 1, and a solution whose reasoning never prints its answer (1608).
GSM8K_LINES = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
               "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
               "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
    {"question": "Carter grew 9 plants with 3 seed packets. How many more seed packets does Carter need to have "
                 "a total of 12 plants in his backyard?",
     "answer": "If he grows 9 plants with 3 seed packets, he grows 9/3=<<9/3=3>>3 plants with 1 seed packet.\n"
               "Since 1 seed packet grows 3 plants, he'll need 1 more to make the plants 12.\n#### 1"},
]


def _run(*argv):
    parser = argparse.ArgumentParser(prog="rstar")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def _write_gsm8k(tmp_path, records, name="gsm8k_train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_practice_writes_jsonl(tmp_path, capsys):
    out = tmp_path / "sub" / "practice.jsonl"
    assert _run("practice", "--levels", "1-3", "--n", "4", "--seed", "5", "--split", "heldout",
                "--out", str(out)) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["level"] for r in records] == [1] * 4 + [2] * 4 + [3] * 4
    assert records[0]["id"] == "practice-L1-heldout-00000"
    assert set(records[0]) == {"id", "question", "answer", "level"} and records[0]["answer"].isdigit()
    assert "wrote 12 heldout problems" in capsys.readouterr().out
    # Same arguments, same file.
    again = tmp_path / "again.jsonl"
    _run("practice", "--levels", "1-3", "--n", "4", "--seed", "5", "--split", "heldout", "--out", str(again))
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("text,levels", [("1-5", (1, 2, 3, 4, 5)), ("2,4", (2, 4)), ("3", (3,)),
                                         (" 1 - 2 , 5", (1, 2, 5))])
def test_parse_levels(text, levels):
    assert parse_levels(text) == levels


@pytest.mark.parametrize("argv,message", [
    (["--levels", "0-2", "--n", "3"], "unknown level(s) [0]"),
    (["--levels", "6", "--n", "3"], "unknown level(s) [6]"),
    (["--levels", "a-b", "--n", "3"], "--levels: expected levels like"),
    (["--levels", "4-2", "--n", "3"], "--levels: empty range"),
    (["--levels", "1", "--n", "0"], "--n must be >= 1, got 0"),
])
def test_practice_bad_input_is_a_usage_error(tmp_path, argv, message):
    out = tmp_path / "p.jsonl"
    with pytest.raises(UsageError) as raised:
        _run("practice", *argv, "--out", str(out))
    assert message in str(raised.value)
    assert not out.exists()


def test_bootstrap_writes_trajectories_and_manifest(tmp_path, capsys):
    source = _write_gsm8k(tmp_path, GSM8K_LINES)
    out_dir = tmp_path / "round0"
    assert _run("bootstrap", "--gsm8k", str(source), "--out", str(out_dir)) == 0
    payload = (out_dir / "trajectories.jsonl").read_bytes()
    records = [json.loads(line) for line in payload.decode().splitlines()]
    assert [r["id"] for r in records] == ["gsm8k-train-0", "gsm8k-train-1"]
    assert records[0]["answer"] == "72" and records[0]["steps"][-2].endswith("\nOutput: 72")
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(payload).hexdigest()
    assert manifest["source"] == str(source.resolve()) and manifest["records"] == 2
    assert manifest["counts"] == {"total": 3, "converted": 3, "ran": 3, "correct": 2,
                                  "rejected": {"wrong_answer": 1}}
    assert manifest["wall_s"] > 0 and manifest["verified_share"] == pytest.approx(2 / 3)
    assert "kept 2/3" in capsys.readouterr().out


def test_bootstrap_limit(tmp_path):
    source = _write_gsm8k(tmp_path, GSM8K_LINES)
    _run("bootstrap", "--gsm8k", str(source), "--out", str(tmp_path / "o"), "--limit", "1")
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["counts"]["total"] == 1 and manifest["records"] == 1


@pytest.mark.parametrize("lines,message", [
    (None, "file not found"),
    (['{"question": "q", "answer": "a"}', '{"question": "q"'], "gsm8k_train.jsonl:2: invalid JSON"),
    (['{"question": "q"}'], "gsm8k_train.jsonl:1: field 'answer' must be a non-empty string"),
    (['[1, 2]'], "gsm8k_train.jsonl:1: expected a JSON object"),
    ([""], "no problems in file"),
])
def test_bootstrap_bad_input_is_a_usage_error(tmp_path, lines, message):
    source = tmp_path / "gsm8k_train.jsonl"
    if lines is not None:
        source.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=message):
        _run("bootstrap", "--gsm8k", str(source), "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_bootstrap_rejects_bad_limit(tmp_path):
    source = _write_gsm8k(tmp_path, GSM8K_LINES)
    with pytest.raises(UsageError, match="--limit must be >= 1"):
        _run("bootstrap", "--gsm8k", str(source), "--out", str(tmp_path / "o"), "--limit", "0")


def test_read_gsm8k_ids(tmp_path):
    path = _write_gsm8k(tmp_path, [GSM8K_LINES[0], dict(GSM8K_LINES[1], id="own-id")], name="gsm8k_test.jsonl")
    assert [r[0] for r in read_gsm8k(path)] == ["gsm8k-test-0", "own-id"]
    assert len(read_gsm8k(path, limit=1)) == 1
