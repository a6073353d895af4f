"""Run the real-cluster suite as against a real cluster, with the emulator as that cluster.

    python3 tests/realcluster/run_against_emulator.py [pytest arguments]

It starts the emulator (``support.kube``) on 127.0.0.1 with the Deployment and Argo controllers
played in the background (``support.clusters``), writes a kubeconfig for it, and runs
``pytest -m realcluster tests/realcluster`` with ``KUBECONFIG`` pointing there, so the suite
takes its real-cluster path: the kubeconfig loaded as canaryd loads it, a namespace created
and deleted per test through the API, one server shared by every test, controllers that the
tests do not drive. Exits with pytest's exit code. ``CANARYD_REALCLUSTER_TIMEOUT`` is 10 s
unless set (the emulated controllers answer within 20 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "daemon")]

from support import clusters, kube  # noqa: E402  (needs the paths above)


async def main(args: list[str]) -> int:
    async with kube.cluster() as c:
        controllers = asyncio.create_task(clusters.play_controllers(c))
        try:
            with tempfile.TemporaryDirectory(prefix="canaryd-rc-") as tmp:
                env = {k: v for k, v in os.environ.items() if k != clusters.MODE_ENV}
                env["KUBECONFIG"] = str(kube.kubeconfig(Path(tmp) / "kubeconfig", c.url))
                env.setdefault(clusters.TIMEOUT_ENV, "10")
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(ROOT / "daemon"), *filter(None, [os.environ.get("PYTHONPATH")])]
                )
                command = [sys.executable, "-m", "pytest", "-m", "realcluster"]
                command += args or ["-q", "-p", "no:cacheprovider", "tests/realcluster"]
                pytest = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=env)
                code = await pytest.wait()
            left = [n for n in c.emulator.namespaces if n.startswith("canaryd-rc-")]
            if left:
                print(f"run_against_emulator: namespaces left behind: {left}", file=sys.stderr)
                return code or 1
            return code
        finally:
            controllers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await controllers


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
