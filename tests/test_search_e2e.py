"""unifairseq-search end to end (issue 17): real trials (scripts/train_glue.sh --tiny on SST-2, 8 updates
each) on an SQLite study. The CSV, the PNG, best.json and the front; the stored counts against the count
each run's own model reports; a budget that drops a point; failed trials recorded with their log tail;
a SIGKILL'd search resumed; two workers on one study."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import csv

import pytest

from env import DATA, REPO, require_data, tool_env

pytestmark = pytest.mark.slow


def search(out, *args, timeout=600, check=True):
    proc = subprocess.run([sys.executable, "-m", "unifairseq.search.cli", "--task", "SST-2", "--tiny",
                           "--out", str(out), *map(str, args)], cwd=REPO, env=tool_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"unifairseq-search failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    require_data("glue/SST-2/train.tsv", "glue/SST-2/dev.tsv")
    out = tmp_path_factory.mktemp("sst2") / "data"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "preprocess_glue.sh"), "SST-2", "--glue-dir",
                           str(DATA / "glue"), "--out", str(out), "--tiny"], cwd=REPO, env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def grid(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def trials(out):
    with open(out / "trials.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def logged_counts(folder):
    """(paper formula count, frozen base count) as the trial's own model reported them."""
    text = open(os.path.join(folder, "train.log"), encoding="utf-8").read()
    m = re.search(r"of the ([\d,]+) frozen base parameters\); paper formula count ([\d,]+)", text)
    return int(m.group(2).replace(",", "")), int(m.group(1).replace(",", ""))


THREE = ("points:\n  - ffn_mode: adapter\n    ffn_option: parallel\n    ffn_bn: [4, 64]\n"
         "  - attn_mode: lora\n    attn_bn: 2\n    lora_alpha: 4\n")


def test_grid_search_end_to_end(data, tmp_path):
    out = tmp_path / "s"
    # ffn_bn 64 stores 16,384 (2rd x 2 layers): over the budget, never trained
    proc = search(out, "--data", data, "--space", grid(tmp_path, THREE), "--budget", "5000", "--reference", "55")
    rows = trials(out)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"], rows
    assert {r["label"].split()[-1] for r in rows} == {"ffn_bn=4", "attn_bn=2"}
    best = json.loads((out / "best.json").read_text())
    for r in rows:
        folder = out / "trials" / f"{int(r['number']):04d}"
        stored, base = logged_counts(folder)
        assert int(r["stored_params"]) == stored  # the plan's count = what the built model reports
        assert best["base_params"] == base
        assert float(r["stored_pct"]) == pytest.approx(100 * stored / base, abs=1e-4)
        argv = json.loads((folder / "train_args.json").read_text())
        assert r["command"] == shlex.join(argv) and argv[0].endswith("fairseq-train")
        valid = [json.loads(l[l.index("{"):]) for l in (folder / "train.log").read_text().splitlines()
                 if "| valid |" in l]
        assert float(r["metric"]) == max(float(v["valid_accuracy"]) for v in valid)  # fairseq logs strings
        assert float(r["wall_s"]) > 0
    assert {int(r["stored_params"]) for r in rows} == {2 * 4 * 64 * 2, 4 * 2 * 64 * 2}
    # the front: no complete trial beats a front member on both objectives
    front = best["front"]
    assert front and all(not (float(o["metric"]) >= f["metric"] and int(o["stored_params"]) < f["stored_params"])
                         for f in front for o in rows)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "budget 5000:" in proc.stdout and "fairseq-train" in proc.stdout
    dashboard_shows(out / "search.db", rows, front)
    # the same command again: the study is done, nothing reruns
    mtime = (out / "trials" / "0000" / "train.log").stat().st_mtime
    search(out, "--data", data, "--space", grid(tmp_path, THREE), "--budget", "5000")
    assert len(trials(out)) == 2 and (out / "trials" / "0000" / "train.log").stat().st_mtime == mtime
    # ... and the same study with other settings is refused, not silently mixed
    proc = search(out, "--data", data, "--space", grid(tmp_path, THREE), "--budget", "6000", check=False)
    assert proc.returncode == 2 and "was made with another budget (5000, now 6000)" in proc.stderr, proc.stderr


def dashboard_shows(db, rows, front):
    """`optuna-dashboard sqlite:///OUT/search.db` (a real server on loopback) serves the study: its trials with
    the CSV's metric and stored count, and Optuna's own Pareto front equal to ours."""
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "optuna-dashboard"), f"sqlite:///{db}",
                             "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=tool_env())
    try:
        deadline, studies = time.time() + 60, None
        while studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        (study,) = studies
        assert study["study_name"] == "search" and study["directions"] == ["maximize", "minimize"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0",
                                    timeout=30) as r:
            doc = json.load(r)
        shown = {t["number"]: t["values"] for t in doc["trials"] if t["state"] == "Complete"}
        assert shown == {int(r["number"]): [float(r["metric"]), float(r["stored_params"])] for r in rows}
        assert sorted(t["number"] for t in doc["best_trials"]) == sorted(int(f["number"]) for f in front)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_failed_trials_are_recorded_and_the_study_goes_on(data, tmp_path):
    out = tmp_path / "s"
    space = grid(tmp_path, "points:\n  - attn_mode: lora\n    attn_bn: [1, 2]\n")
    proc = search(out, "--data", data, "--space", space, "--", "--no-such-fairseq-flag")
    rows = trials(out)
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"]  # the first failure did not stop the second
    assert all("exited with status 2" in r["error"] for r in rows)
    import optuna

    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out}/search.db")
    assert all("--no-such-fairseq-flag" in t.user_attrs["log_tail"] for t in study.trials)
    assert "no finished trial fits" in proc.stdout


def test_sigkilled_search_resumes(data, tmp_path):
    out = tmp_path / "s"
    space = grid(tmp_path, "points:\n  - ffn_mode: adapter\n    ffn_option: parallel\n    ffn_bn: [2, 3]\n")
    cmd = [sys.executable, "-m", "unifairseq.search.cli", "--task", "SST-2", "--tiny", "--out", str(out), "--data",
           str(data), "--space", str(space)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / "trials" / "0001" / "search.log"
    deadline = time.monotonic() + 300
    while not second.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert second.exists(), "the second trial never started"
    proc.send_signal(signal.SIGKILL)  # mid-trial: trial 0 done, trial 1 running
    proc.wait()
    first_log = (out / "trials" / "0000" / "train.log").stat().st_mtime
    done = search(out, "--data", data, "--space", space)
    assert "trials 1 were left running by a killed search" in done.stdout
    rows = trials(out)
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "FAIL"), ("2", "COMPLETE")]
    assert rows[1]["error"] == "the search was killed while this trial ran"
    assert rows[2]["label"] == rows[1]["label"]  # retried once, as a new trial
    assert (out / "trials" / "0000" / "train.log").stat().st_mtime == first_log  # the finished one not rerun


def test_two_workers_share_one_study(data, tmp_path):
    out = tmp_path / "s"
    space = grid(tmp_path, "points:\n  - attn_mode: lora\n    attn_bn: [1, 2, 3]\n")
    search(out, "--data", data, "--space", space, "--workers", "2")
    rows = trials(out)
    assert sorted(r["label"] for r in rows) == sorted({r["label"] for r in rows})  # no point run twice
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows)
    import optuna

    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out}/search.db")
    assert len({t.user_attrs["pid"] for t in study.trials if "pid" in t.user_attrs}) == 2  # both worked


def test_registry_space_sampled_under_a_budget(data, tmp_path):
    """The default space (the registry, sampled by TPE), limited to LoRA, single objective under a budget:
    every trial's size is one the budget allows, by the formula 4*r*d per attention / 10*r*d per FFN."""
    out = tmp_path / "s"
    search(out, "--data", data, "--methods", "lora", "--budget", "1500", "--n-trials", "2", "--objective", "metric")
    rows = trials(out)
    assert len(rows) == 2 and all(r["state"] == "COMPLETE" and r["method"] == "lora" for r in rows), rows
    for r in rows:
        flags = json.loads(r["flags"])
        stored = (4 * flags.get("attn_bn", 0) + 6 * flags.get("ffn_bn", 0)) * 64 * 2  # d_ff = 2d here: r(d + 2d) x 2
        assert int(r["stored_params"]) == stored <= 1500
        assert logged_counts(out / "trials" / f"{int(r['number']):04d}")[0] == stored


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A real PostgreSQL server on loopback for one test (Debian's postgresql package; under CI it must
    be there). As root, the server runs as the `postgres` user, which refuses nothing then."""
    import glob
    import shutil
    import tempfile

    bindir = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
    if bindir is None and shutil.which("pg_ctl"):
        bindir = os.path.dirname(os.path.realpath(shutil.which("pg_ctl")))
    if bindir is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "PostgreSQL not found: apt-get install postgresql (Debian's package)")
    root = tempfile.mkdtemp(prefix="unifairseq-pg-")  # not under pytest's 0700 folders: the server user reads it
    as_user = []
    if os.getuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), _free_port()
    try:
        subprocess.run([*as_user, f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-w", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True,
                       capture_output=True, timeout=120)
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE search")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/search"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_a_postgresql_study(data, tmp_path, postgres):
    out = tmp_path / "s"
    space = grid(tmp_path, "points:\n  - attn_mode: lora\n    attn_bn: [1, 2, 3]\n")
    search(out, "--data", data, "--space", space, "--workers", "2", "--storage", postgres, "--study", "pg")
    rows = trials(out)
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows), rows
    assert len({r["label"] for r in rows}) == 3  # no point run twice
    import optuna

    study = optuna.load_study(study_name="pg", storage=postgres)
    assert len({t.user_attrs["pid"] for t in study.trials if "pid" in t.user_attrs}) == 2
    assert not (out / "search.db").exists()  # the study is in the server, not in a local file
