"""CI's load-regression gate on the reference server: this commit's build against its parent's, A/B in one run.

The parent commit is checked out into a temporary git worktree and its
reference server started there (``capacity serve`` of that tree, on a free
loopback port); ``capacity regress scenarios/smoke.yaml --against URL`` then
starts this tree's server and serves every arrival to both, interleaved.  With
no parent commit (a shallow clone) the build is compared with itself, which
must pass too.  Exit code: regress's (0 pass, 1 regression or breach, 2 a run
that could not be made).  Report: runs/ci-regress/.

Run: .venv/bin/python .ci/regress.py [--against-commit REV] [capacity regress options...]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from capacity_cli import main as capacity  # noqa: E402
from refserver.serve import die_with_parent, read_port, stop, wait_ready  # noqa: E402

SCENARIO = "scenarios/smoke.yaml"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def main(argv: list[str]) -> int:
    rev = "HEAD~1"
    if argv[:1] == ["--against-commit"] and len(argv) >= 2:
        rev, argv = argv[1], argv[2:]
    with tempfile.TemporaryDirectory(prefix="surgecap-ci-") as tmp:
        work = Path(tmp)
        commit = _git("rev-parse", "-q", "--verify", f"{rev}^{{commit}}").stdout.strip()
        old_tree = ROOT
        if commit and _git("worktree", "add", "--detach", str(work / "old"), commit).returncode == 0:
            old_tree = work / "old"
            print(f"regress: this build against {rev} ({commit[:10]})", flush=True)
        else:
            print(f"regress: no commit {rev} here (a shallow clone?); comparing this build with itself", flush=True)
        cmd = [sys.executable, "-m", "capacity_cli", "serve", SCENARIO, "--port", "0", "--test-mode", "--data-dir", str(work / "old-data")]
        with open(work / "old-server.log", "w") as log:
            proc = subprocess.Popen(
                cmd, cwd=old_tree, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
            )
        try:
            url = f"http://127.0.0.1:{read_port(work / 'old-data' / 'port', proc, timeout=60)}"
            wait_ready(f"{url}/healthz", timeout=60, proc=proc)
            return capacity(["regress", SCENARIO, "--against", url, "--out", str(ROOT / "runs" / "ci-regress"), "--quiet", *argv])
        except RuntimeError as exc:
            print(f"regress: the build compared with did not start: {exc}", file=sys.stderr)
            print((work / "old-server.log").read_text()[-2000:], file=sys.stderr)
            return 2
        finally:
            stop(proc, 30.0, group=True)
            if old_tree != ROOT:
                _git("worktree", "remove", "--force", str(old_tree))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
