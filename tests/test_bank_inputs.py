"""Bank inputs are all checked before the first sentence is decoded (issue 19 item 7): the per-line side
file of fairseq-generate (missing, a directory, not UTF-8, an empty line without a default, an unknown
name) and fairseq-interactive's tags (unknown, malformed) and lines (too long). Each is one line naming
the file or input line and the fix, and no hypothesis is printed before it."""
import subprocess
from types import SimpleNamespace

import pytest

from bankdata import BIN, REPO, binarize, build_bank_checkpoint, make_base, make_dict, train_delta, write_raw
from env import tool_env
from unifairseq.fairseq.tasks.bank_inputs import BankTaskError, check_names, read_delta_file, split_tag

GEN = ["--beam", "2", "--max-len-b", "8", "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0"]
TASK = ["--task", "delta_bank", "--source-lang", "src", "--target-lang", "tgt"]


# ------------------------------------------------------------------ the checks themselves (quick)
def test_tags_plain_malformed_and_refused():
    assert split_tag("<delta=mt> a b") == ("mt", "a b")
    assert split_tag("a <delta=mt> b") == (None, "a <delta=mt> b")  # a tag only at the start
    for bad in ("<delta=> a", "<DELTA=mt> a", "<delta = mt> a", "<delta=mt a", " <delta=mt> a"):
        with pytest.raises(BankTaskError) as e:
            split_tag(bad, "input line 3")
        assert str(e.value) == (f"input line 3: malformed delta tag at {bad.strip()[:40]!r}; write <delta=NAME> "
                                "(lower case, no spaces, at the very start of the line), or remove it to use "
                                "--default-delta")


def test_side_file_problems_name_the_file_and_line(tmp_path):
    with pytest.raises(BankTaskError, match=r"^--delta-per-line .*nope.delta: no such file; give the file"):
        read_delta_file(str(tmp_path / "nope.delta"))
    with pytest.raises(BankTaskError, match=r"^--delta-per-line .*: is a directory; give the file"):
        read_delta_file(str(tmp_path))
    bad = tmp_path / "latin1.delta"
    bad.write_bytes("mt\nsum\nr\xe9sum\xe9\n".encode("latin-1"))
    with pytest.raises(BankTaskError) as e:
        read_delta_file(str(bad))
    assert str(e.value) == f"{bad} line 3: not UTF-8 text (invalid continuation byte at byte 8); save the file as UTF-8"
    where = lambda i: f"test.delta line {i + 1}"
    check_names(["mt", None, "sum"], ["mt", "sum"], "mt", where)  # an empty line takes the default
    with pytest.raises(BankTaskError) as e:
        check_names(["mt", None], ["mt", "sum"], None, where)
    assert str(e.value) == ("test.delta line 2: names no delta and there is no --default-delta (nor the model's "
                            "--bank-default); name one of the bank's deltas there (mt, sum) or pass --default-delta NAME")
    with pytest.raises(BankTaskError) as e:
        check_names(["mt", "sum", "summ"], ["mt", "sum"], "mt", where)
    assert str(e.value) == "test.delta line 3: unknown delta 'summ'; the bank has: mt, sum"


# ------------------------------------------------------------------ through fairseq's command lines
@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    w = tmp_path_factory.mktemp("bank_inputs")
    write_raw(w / "raw", 5, {"train": 16, "valid": 4, "test": 8})
    data = binarize(w / "raw", w / "bin", make_dict(w / "dict.txt"))
    base = make_base(data, w / "base.pt")
    files = {m: train_delta(data, base, m, w / m, updates=1) for m in ("lora", "pfeiffer")}
    return SimpleNamespace(w=w, data=data, bank=build_bank_checkpoint(data, base, files, w / "bank.pt"))


def fairseq(tool, bank, *extra, stdin=None):
    p = subprocess.run([str(BIN / tool), str(bank.data), "--user-dir", str(REPO / "user_dir"), *TASK, "--path",
                        str(bank.bank), *GEN, *map(str, extra)], input=stdin, capture_output=True, text=True,
                       env=tool_env(), timeout=300)
    return p


def refused(p, line):
    """Exit status 1, the error as stderr's last line, no traceback and no hypothesis before it."""
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == f"unifairseq: error: {line}", p.stderr[-3000:]
    assert not [l for l in p.stdout.splitlines() if l.startswith("H-")], p.stdout[-3000:]


@pytest.mark.slow
def test_generate_refuses_bad_side_files_before_decoding(bank):
    w = bank.w
    ok = w / "ok.delta"
    ok.write_text("lora\npfeiffer\n" * 4)
    p = fairseq("fairseq-generate", bank, "--gen-subset", "test", "--delta-per-line", ok, "--batch-size", "2")
    assert p.returncode == 0 and len([l for l in p.stdout.splitlines() if l.startswith("H-")]) == 8, p.stderr[-2000:]
    unknown = w / "unknown.delta"
    unknown.write_text("lora\n" * 6 + "lorra\nlora\n")  # the bad name on the last batch's line
    blank = w / "blank.delta"
    blank.write_text("lora\n\n" + "lora\n" * 6)
    latin = w / "latin.delta"
    latin.write_bytes(b"lora\n" * 4 + b"pf\xe9iffer\n" + b"lora\n" * 3)
    cases = [(w / "missing.delta", f"--delta-per-line {w / 'missing.delta'}: no such file; give the file with one "
                                   "delta name per line of the split (an empty line: --default-delta)"),
             (w, f"--delta-per-line {w}: is a directory; give the file with one delta name per line of the split"),
             (latin, f"{latin} line 5: not UTF-8 text (invalid continuation byte at byte 22); save the file as UTF-8"),
             (unknown, f"{unknown} line 7: unknown delta 'lorra'; the bank has: lora, pfeiffer"),
             (blank, f"{blank} line 2: names no delta and there is no --default-delta (nor the model's "
                     "--bank-default); name one of the bank's deltas there (lora, pfeiffer) or pass --default-delta NAME")]
    for path, line in cases:
        refused(fairseq("fairseq-generate", bank, "--gen-subset", "test", "--delta-per-line", path,
                        "--batch-size", "2"), line)


@pytest.mark.slow
def test_interactive_refuses_bad_tags_and_lines_before_decoding(bank):
    buffered = ("--buffer-size", "4", "--batch-size", "4")
    p = fairseq("fairseq-interactive", bank, "--default-delta", "lora", *buffered, stdin="w1 w2\n<delta=pfeiffer> w3\n")
    assert p.returncode == 0 and len([l for l in p.stdout.splitlines() if l.startswith("H-")]) == 2, p.stderr[-2000:]
    refused(fairseq("fairseq-interactive", bank, "--default-delta", "lora", *buffered,
                    stdin="w1 w2\n<delta=nope> w3\n"), "input line 2: unknown delta 'nope'; the bank has: lora, pfeiffer")
    for tag in ("<delta=>", "<DELTA=lora>"):
        refused(fairseq("fairseq-interactive", bank, "--default-delta", "lora", *buffered, stdin=f"w1\n{tag} w3 w4\n"),
                f"input line 2: malformed delta tag at '{tag} w3 w4'; write <delta=NAME> (lower case, no spaces, at "
                "the very start of the line), or remove it to use --default-delta")
    refused(fairseq("fairseq-interactive", bank, *buffered, stdin="<delta=lora> w1\nw2\n"),
            "input line 2: names no delta and there is no --default-delta (nor the model's --bank-default); name one "
            "of the bank's deltas there (lora, pfeiffer) or pass --default-delta NAME")
    long_line = " ".join(["w3"] * 40)
    refused(fairseq("fairseq-interactive", bank, "--default-delta", "lora", "--max-source-positions", "32", *buffered,
                    stdin=f"w1 w2\n{long_line}\n"),
            "input line 2: 41 tokens, more than the model's 32 source positions; shorten or split the line")
