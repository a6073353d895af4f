"""``docs/guides/systemd.md``'s nginx side fits the file canaryd writes for the guide's config.

The guide's config (``systemd/canaryd.yaml``, which ``test_systemd_unit.py`` holds the guide
to, and ``test_doc_configs.py`` runs through ``canaryd check``) has canaryd write an include
file for target ``web``; the guide shows the ``http { }`` block that includes it and proxies
through its variable. Here canaryd's nginx router, built from that config by the daemon's
factory, writes the file (into ``tmp_path`` instead of ``/etc/nginx/canaryd``), and the real
nginx tests the guide's block with it (``nginx -t``): a renamed upstream or variable on either
side fails. The guide's block is used as shown, but for the include path and the listening
address, moved to ``tmp_path`` and 127.0.0.1.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from canaryd.adapters.routers.nginx import NginxFileRouter
from canaryd.app import load_config
from support import procs

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "systemd.md"
HOST_CONFIG = ROOT / "systemd" / "canaryd.yaml"


def _guide_block() -> str:
    (block,) = re.findall(r"^```nginx\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), re.M | re.S)
    return str(block)


def _main_config(prefix: Path, http_block: str) -> str:
    """The guide's ``http { }`` in a private nginx's main config (pid, logs, temp dirs)."""
    temp = "".join(
        f"    {kind}_temp_path {prefix / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"pid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'};\n"
        "events { worker_connections 64; }\n" + http_block.replace("http {\n", "http {\n" + temp, 1)
    )


async def test_the_guides_nginx_block_accepts_the_file_canaryd_writes(tmp_path: Path) -> None:
    (target,) = load_config(HOST_CONFIG).targets
    router = target.router
    written = Path(router.path)  # type: ignore[attr-defined]
    include = tmp_path / "canaryd" / written.name
    include.parent.mkdir()
    await NginxFileRouter(
        target.name,
        include,
        stable_servers=router.stable_servers,  # type: ignore[attr-defined]
        canary_servers=router.canary_servers,  # type: ignore[attr-defined]
        test_command=["true"],
        reload_command=["true"],
    ).set_weight(25)

    block = _guide_block()
    assert f"include {written};" in block and "listen 80;" in block, block
    http = block.replace(str(written), str(include)).replace(
        "listen 80;", f"listen 127.0.0.1:{procs.free_port()};"
    )
    config = tmp_path / "nginx.conf"
    config.write_text(_main_config(tmp_path, http), encoding="utf-8")
    nginx = procs.find_binary("nginx")
    done = subprocess.run(
        [nginx, "-t", "-c", str(config), "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{config.read_text()}\n{include.read_text()}\n{done.stderr}"
    assert "syntax is ok" in done.stderr and "test is successful" in done.stderr
