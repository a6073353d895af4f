"""``canaryd demo``: canaryd's main job on one machine, with real parts, start to finish.

What runs, all on 127.0.0.1, all started here and stopped by pid at the end:

* the demo service as the stable version (``v1.0.0``), and as each canary, as local processes
  (``demo.platform.LocalProcesses``, canaryd's platform for the demo);
* nginx in front of them, driven by canaryd's real ``nginx`` router (an upstream with weights
  and the ``X-Canary-Deploy: canary`` override, ``nginx -t`` then a graceful reload);
* Prometheus scraping both versions and canaryd itself, with an alerting rule on the canary's
  error rate; Alertmanager posting that alert to canaryd's webhook with a bearer token;
* canaryd itself (the same ``Daemon`` as ``canaryd serve``, from a config written here), driven
  over its HTTP API as ``canaryctl`` drives it;
* a load generator sending steady traffic through nginx and counting which version answered.

Three rollouts follow: a good version, promoted through every stage (10% → 25% → 50% → 100%);
a subtly bad one, 40 % slower than stable from its first request but far inside every absolute
SLO (its P95 stays under 90 ms against 250 ms, it fails nothing), which only the comparison with
stable can tell apart: canaryd rolls it back on ``latency-vs-stable``, and the report charts the
evidence (each side's share of slow requests, the test's e-value against its bound); and a bad
one that starts healthy and turns bad (30 % errors) once it takes 25 % of the traffic: canaryd
rolls it back on its own, through its PromQL checks or the Alertmanager alert, whichever sees
it first. The subtle one runs before the bad one so that no absolute check of its rollout can
see the bad canary's errors still in its ``window``. Progress is printed as it happens; at the
end a report is written (``report.html`` with charts, ``report.json``) and a summary printed.
``--fast`` shortens the stages (whole demo in about two minutes); without it the shipped
``matriz-fast-track`` policy runs at its real pace (the good rollout alone takes its 17 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml

from canaryd.adapters.routers import nginx as nginx_router
from canaryd.adapters.telemetry import configure_logging
from canaryd.app import Daemon, load_config
from canaryd.config import policies
from canaryd.core.durations import format_duration, parse_duration
from canaryd.core.errors import CanarydError
from canaryd.ctl.client import Client, decisions_of, rollout_of
from canaryd.ctl.text import checks_text, decision_text, time_left
from canaryd.demo import report, stack
from canaryd.demo.platform import LocalProcesses

TARGET = "matriz"
STABLE_IMAGE = "v1.0.0"
GOOD_IMAGE = "v2.0.0"
BAD_IMAGE = "v2.1.0"
SUBTLE_IMAGE = "v2.2.0"
LATENCY = 0.05  # seconds per request of every version but the subtle one (±25 % jitter)
SUBTLE_LATENCY = 0.07  # 40 % slower: 52-88 ms, inside the 250 ms P95 SLO, but worse than stable
FAULT_ERROR_RATE = 0.3
TAIL = 3.0  # seconds sampled after a rollout ended, to show where the traffic went


@dataclass(frozen=True)
class Pace:
    """How fast the demo runs: stage lengths and evaluation timing."""

    stages: tuple[str, ...]  # durations of the policy's stages
    min_requests: int
    interval: str
    window: str
    scrape: str
    rps: float

    @classmethod
    def of(cls, fast: bool) -> Pace:
        if fast:
            return cls(("15s", "20s", "20s", "0s"), 10, "2s", "10s", "1s", 40.0)
        return cls((), 0, "", "", "5s", 20.0)  # the shipped policy as it is


@dataclass
class Traffic:
    """What the load generator saw, per second: answers by deployment and by status class, and
    how long the canary's answers took."""

    by_second: dict[int, Counter[str]] = field(default_factory=dict)
    canary_seconds: dict[int, list[float]] = field(default_factory=dict)

    def add(self, deployment: str, ok: bool, took: float | None = None) -> None:
        second = int(time.time())
        counts = self.by_second.setdefault(second, Counter())
        counts[deployment] += 1
        counts[f"{deployment}:{'ok' if ok else 'error'}"] += 1
        if deployment == "canary" and took is not None:
            self.canary_seconds.setdefault(second, []).append(took)

    def last_second(self, since: float) -> tuple[float | None, float | None, float | None]:
        """(canary share %, canary success %, canary P95 in ms) over the last whole second, if
        it began after ``since`` (a second of the previous rollout is not this one's)."""
        second = int(time.time()) - 1
        if second < since:
            return None, None, None
        counts = self.by_second.get(second, Counter())
        total = counts["canary"] + counts["stable"]
        share = 100.0 * counts["canary"] / total if total else None
        success = 100.0 * counts["canary:ok"] / counts["canary"] if counts["canary"] else None
        took = sorted(self.canary_seconds.get(second, ()))
        p95 = 1000.0 * took[min(len(took) - 1, int(0.95 * len(took)))] if took else None
        return share, success, p95


class Tour:
    def __init__(self, workdir: Path, fast: bool, out: TextIO) -> None:
        self.workdir = workdir
        self.fast = fast
        self.pace = Pace.of(fast)
        self.out = out
        self.ascii = not (getattr(out, "encoding", None) or "utf-8").lower().startswith("utf")
        self.token = secrets.token_hex(16)
        self.traffic = Traffic()
        self.front = ""  # nginx's URL, once it runs
        self.processes: list[stack.Process] = []
        self.started = time.monotonic()
        self.deadline = 300.0 if fast else 3600.0  # seconds a rollout may take in the demo

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=self.out, flush=True)

    # ------------------------------------------------------------------ set-up

    def write_policy(self) -> Path:
        shipped = policies.resolve("matriz-fast-track", self.workdir)
        doc = yaml.safe_load(shipped.read_text())
        # the demo's Prometheus scrapes every pace.scrape: twice that is enough (core.scope)
        doc["min_window"] = format_duration(2 * parse_duration(self.pace.scrape))
        if self.fast:
            doc["name"] = "matriz-demo-fast"
            doc["description"] = "matriz-fast-track with its stages shortened for canaryd demo"
            doc.update(interval=self.pace.interval, window=self.pace.window)
            doc["scale_down_delay"] = "5s"
            doc["limits"].update(progress_deadline="60s", inconclusive_limit=5)
            for stage, duration in zip(doc["stages"], self.pace.stages, strict=True):
                stage.update(duration=duration, min_requests=self.pace.min_requests)
        path = self.workdir / "policy.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def write_config(
        self, ports: dict[str, int], policy: Path, nginx: dict[str, Any], prometheus: str
    ) -> Path:
        (self.workdir / "tokens.yaml").write_text(
            f"- {{name: demo, role: admin, token: {self.token}}}\n"
        )
        (self.workdir / "webhook-token").write_text(self.token + "-webhook\n")
        for secret in ("tokens.yaml", "webhook-token"):  # serve refuses ones others may write
            (self.workdir / secret).chmod(0o600)
        config = {
            "listen": f"127.0.0.1:{ports['canaryd']}",
            "state": {"backend": "sqlite", "path": str(self.workdir / "state.db")},
            "prometheus": {"url": prometheus, "timeout": "5s"},
            "auth": {
                "tokens_file": str(self.workdir / "tokens.yaml"),
                "webhook": {"bearer_token_file": str(self.workdir / "webhook-token")},
            },
            "targets": [
                {
                    "name": TARGET,
                    "policy": str(policy),
                    "platform": {"kind": "none"},  # replaced by the demo's local processes
                    "router": {"kind": "nginx", **nginx},
                    "labels": {"job": TARGET},
                }
            ],
        }
        path = self.workdir / "canaryd.yaml"
        path.write_text(
            "# written by canaryd demo; check it with: canaryd check -c "
            + str(path)
            + "\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        return path

    # ------------------------------------------------------------------ the run

    async def run(self) -> dict[str, Any]:
        binaries = stack.Binaries.find()
        ports = {name: stack.free_port() for name in ("stable", "canary", "nginx", "canaryd")}
        platform = LocalProcesses(
            self.workdir,
            stable_port=ports["stable"],
            canary_port=ports["canary"],
            latency=LATENCY,
            latencies={SUBTLE_IMAGE: SUBTLE_LATENCY},
        )
        daemon_task: asyncio.Task[None] | None = None
        daemon: Daemon | None = None
        try:
            self.say(f"work directory {self.workdir}")
            await platform.start_stable(STABLE_IMAGE)
            self.say(f"stable {STABLE_IMAGE} answers on {platform.url('stable')}")
            nginx_dir = self.workdir / "nginx"
            nginx_dir.mkdir(exist_ok=True)
            conf, include = nginx_dir / "nginx.conf", nginx_dir / f"{TARGET}.conf"
            test, reload = stack.nginx_commands(binaries.nginx, conf, nginx_dir)
            router = {
                "path": str(include),
                "upstream": TARGET,
                "stable_servers": [f"127.0.0.1:{ports['stable']}"],
                "canary_servers": [f"127.0.0.1:{ports['canary']}"],
                "test_command": test,
                "reload_command": reload,
            }
            # nginx needs the include before it starts: what the router writes for weight 0.
            include.write_text(
                nginx_router.render(
                    TARGET, TARGET, router["stable_servers"], router["canary_servers"], 0
                )
            )
            pool = f"{TARGET}_pool"
            conf.write_text(stack.nginx_config(nginx_dir, ports["nginx"], include, pool))
            self.processes.append(
                await stack.start_nginx(binaries.nginx, conf, nginx_dir, ports["nginx"])
            )
            self.say(f"nginx routes http://127.0.0.1:{ports['nginx']}/ (all to stable)")
            canaryd_url = f"http://127.0.0.1:{ports['canaryd']}"
            alertmanager = await stack.start_alertmanager(
                binaries.alertmanager,
                self.workdir,
                f"{canaryd_url}/api/v1/alerts",
                self.workdir / "webhook-token",
            )
            self.processes.append(alertmanager)
            self.say(f"alertmanager on {alertmanager.url} posts alerts to canaryd's webhook")
            prometheus = await stack.start_prometheus(
                binaries.prometheus,
                self.workdir,
                {
                    TARGET: [
                        (f"127.0.0.1:{ports['stable']}", {}),
                        (f"127.0.0.1:{ports['canary']}", {}),
                    ],
                    "canaryd": [(f"127.0.0.1:{ports['canaryd']}", {})],
                },
                _alert_rules(self.pace.window or "1m"),
                alertmanager.port,
                self.pace.scrape,
            )
            self.processes.append(prometheus)
            self.say(f"prometheus on {prometheus.url} scrapes both versions and canaryd")
            config = self.write_config(ports, self.write_policy(), router, prometheus.url)
            settings = load_config(config)
            log = (self.workdir / "canaryd.log").open("a")
            configure_logging("info", json_logs=True, stream=log)
            daemon = Daemon(settings, platforms={TARGET: platform}, gather=0.1)
            daemon.supervisor.signals = False  # Ctrl-C is the tour's: it stops all (``run``)
            daemon_task = asyncio.create_task(daemon.run())
            client = Client(canaryd_url, self.token)
            await self._until_ready(client, daemon_task)
            self.say(f"canaryd on {canaryd_url} (config {config}, log {self.workdir}/canaryd.log)")
            async with asyncio.TaskGroup() as tg:
                self.front = f"http://127.0.0.1:{ports['nginx']}/"
                load = tg.create_task(self._load(self.front))
                await self._until_scraped(prometheus.url)
                records = []
                for name, image, expected in ROLLOUTS:
                    fault = platform if name == "bad" else None
                    records.append(
                        await self._rollout(client, daemon_task, name, image, expected, fault)
                    )
                    await self._until_canary_removed(platform, name)
                load.cancel()
            return self._finish(records, settings.targets[0].policy.name)
        except asyncio.CancelledError:
            self.say("interrupted: stopping canaryd and everything the demo started")
            raise
        finally:
            if daemon is not None and daemon_task is not None:
                daemon.supervisor.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(daemon_task, 10)
            for process in reversed(self.processes):
                await process.stop()
            await platform.close()

    async def _until_ready(self, client: Client, daemon: asyncio.Task[None]) -> None:
        for _ in range(200):
            if daemon.done():
                daemon.result()  # raises what stopped it
                raise stack.StackError("canaryd stopped before it was ready")
            try:
                await asyncio.to_thread(client.request, "GET", "/readyz")
                return
            except CanarydError:
                await asyncio.sleep(0.1)
        raise stack.StackError("canaryd did not become ready in 20 s")

    async def _until_scraped(self, prometheus: str) -> None:
        """Prometheus scrapes for the first time ~5 s after it starts; wait for the stable."""
        query = f'count(http_requests_total{{job="{TARGET}",deployment="stable"}})'
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                async with session.post(
                    f"{prometheus}/api/v1/query", data={"query": query}
                ) as response:
                    body = await response.json()
                if body.get("data", {}).get("result"):
                    # two samples for rate()
                    await asyncio.sleep(2 * parse_duration(self.pace.scrape))
                    self.say("prometheus has the stable's metrics; traffic flows through nginx")
                    return
                await asyncio.sleep(0.2)
        raise stack.StackError("prometheus did not scrape the stable service within 60 s")

    async def _load(self, url: str) -> None:
        """Steady traffic through nginx; each answer counted by the version that gave it."""
        timeout = aiohttp.ClientTimeout(total=5.0)
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as tg:

            async def one() -> None:
                sent_at = loop.time()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        deployment = response.headers.get("X-Deployment", "nginx")
                        took = loop.time() - sent_at
                        self.traffic.add(deployment, response.status < 500, took)
                except (aiohttp.ClientError, TimeoutError):
                    self.traffic.add("unreachable", False)

            while True:  # cancelled by the caller; at most ~1 h of load at the demo's rate
                sent += 1
                await asyncio.sleep(max(0.0, start + sent / self.pace.rps - loop.time()))
                tg.create_task(one())

    async def _rollout(
        self,
        client: Client,
        daemon: asyncio.Task[None],
        name: str,
        image: str,
        expected: str,
        platform: LocalProcesses | None = None,
    ) -> report.RolloutRecord:
        record = report.RolloutRecord(name, image, expected)
        self.say(f"{name} rollout: canaryctl start {TARGET} --image {image}")
        began = time.time()
        await asyncio.to_thread(client.start, TARGET, image)
        shown, shown_at = "", 0.0
        told: set[int] = set()  # decisions already printed, by seq
        ended: float | None = None
        while True:
            if daemon.done():
                daemon.result()
                raise stack.StackError("canaryd stopped during the demo")
            view = await asyncio.to_thread(client.target, TARGET)
            rollout = view.get("rollout") or {}
            checks = {k: v.get("value") for k, v in (view.get("checks") or {}).items()}
            share, success, p95 = self.traffic.last_second(began)
            now = time.time() - began
            record.samples.append(
                report.Sample(
                    now,
                    str(rollout.get("phase")),
                    int(rollout.get("stage") or 0),
                    int(rollout.get("weight") or 0),
                    checks,
                    share,
                    success,
                    p95,
                    compare=_evidence(rollout.get("compare")),
                )
            )
            for check, m in (view.get("checks") or {}).items():
                if isinstance(m.get("threshold"), int | float) and check not in record.slos:
                    record.slos[check] = report.Slo(
                        str(m.get("op")), float(m["threshold"]), str(m.get("unit") or "")
                    )
            shown, shown_at = self._progress(name, image, view, share, shown, shown_at, now)
            told = self._decisions(name, image, view, told)
            weight = int(rollout.get("weight") or 0)
            if rollout.get("phase") == "Progressing" and weight not in record.pinned:
                record.pinned[weight] = await self._pinned()
            if (
                platform is not None
                and record.fault_at is None
                and rollout.get("phase") == "Progressing"
                and int(rollout.get("weight") or 0) >= 25
            ):
                await self._inject_fault(platform)
                record.fault_at = time.time() - began
                self.say(f"{name}: the canary now fails {FAULT_ERROR_RATE:.0%} of its requests")
            if rollout.get("phase") in ("Succeeded", "RolledBack"):
                record.final = rollout
                ended = ended or now
                if now - ended >= TAIL:  # a few seconds more: the traffic as it settles
                    break
            if rollout.get("phase") == "Paused" or now > self.deadline:
                why = rollout.get("pause_reason") or f"not finished after {now:.0f}s"
                self.say(f"{name}: stopping the demo here: {why}")
                record.final = rollout
                break
            await asyncio.sleep(0.5)
        history = await asyncio.to_thread(client.history, TARGET)
        decisions = [
            d for d in history.get("decisions", []) if d.get("rollout_id") == rollout.get("id")
        ]
        for d in decisions:
            d["t"] = float(d.get("t_unix") or began) - began  # seconds into the demo
        record.decisions = decisions
        if record.fault_at is not None:
            back = [  # "rolled-back": the router applied 0 % and read it back
                d["t"]
                for d in decisions
                if d.get("action") == "rolled-back" and d["t"] >= record.fault_at
            ]
            record.zero_at = min(back) if back else None
        verdict = "as expected" if record.ok else f"EXPECTED {expected}"
        self.say(f"{name} rollout ended {record.phase} ({verdict})")
        return record

    def _progress(
        self,
        name: str,
        image: str,
        view: dict[str, Any],
        share: float | None,
        shown: str,
        shown_at: float,
        now: float,
    ) -> tuple[str, float]:
        """One progress line on every change of phase, stage or weight, else every 10 s: the
        stage with its time left, each check against its threshold with its verdict (the same
        words as ``canaryctl watch``, from ``ctl.text``), and the share the canary really
        answered. Returns what was shown and when, for the next call."""
        r = rollout_of(view)
        if r is None:
            return shown, shown_at
        key = f"{name} {image}: {r.phase} stage {r.stage_text} weight {r.weight}%"
        if key == shown and now - shown_at < 10:
            return shown, shown_at
        left = time_left(r)
        checks = checks_text(view.get("checks") or {}, self.ascii)
        seen = f" | canary answered {share:.0f}% of requests" if share is not None else ""
        self.say(key + (f" ({left})" if left else "") + (f" | {checks}" if checks else "") + seen)
        return key, now

    def _decisions(self, name: str, image: str, view: dict[str, Any], told: set[int]) -> set[int]:
        """Each decision of this rollout once, the moment the API shows it, with its reason:
        a rollback says why here, not only in the report."""
        r = rollout_of(view)
        for d in decisions_of(view):
            seq = d.get("seq")
            if r is None or d.get("rollout_id") != r.id or not isinstance(seq, int) or seq in told:
                continue
            told.add(seq)
            self.say(f"{name} {image}: decision {decision_text(d)}")
        return told

    async def _until_canary_removed(self, platform: LocalProcesses, name: str) -> None:
        """Wait until canaryd has removed the last rollout's canary (a rolled-back one stays
        ``scale_down_delay``). A rollout started before then would supersede the old one and
        take over its canary slot, with the previous version still running in it."""
        waited = time.monotonic()
        while platform.image("canary") is not None:
            if time.monotonic() - waited > self.deadline:
                raise stack.StackError(f"the {name} rollout's canary was never removed")
            await asyncio.sleep(0.2)
        self.say(f"{name}: canary removed; stable {platform.image('stable')} serves everything")

    async def _pinned(self, probes: int = 5) -> int:
        """How many of ``probes`` requests with ``X-Canary-Deploy: canary`` the canary answered
        (through nginx, whatever the weight)."""
        answered = 0
        timeout = aiohttp.ClientTimeout(total=5.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(probes):
                headers = {"X-Canary-Deploy": "canary"}
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.front, headers=headers) as response:
                        await response.read()
                        answered += response.headers.get("X-Deployment") == "canary"
        return answered

    async def _inject_fault(self, platform: LocalProcesses) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{platform.url('canary')}/admin/fault", json={"error_rate": FAULT_ERROR_RATE}
            ) as response,
        ):
            response.raise_for_status()

    def _finish(self, records: list[report.RolloutRecord], policy: str) -> dict[str, Any]:
        parts = []
        for record in records:
            d = record.as_dict()
            text = f"{record.name} {record.image} {record.phase}"
            took, evidence = d["fault_to_rollback_seconds"], d["evidence"]
            if took is not None:
                text += f", traffic back on stable {took:.1f} s after the fault"
            if evidence:
                last = evidence["points"][-1]
                text += (
                    f" by {evidence['check']} after {last['t']:.0f} s and "
                    f"{last['canary_requests']:.0f} canary requests"
                )
            parts.append(text)
        summary = f"policy {policy}: " + "; ".join(parts)
        meta = {
            "summary": summary,
            "policy": policy,
            "workdir": str(self.workdir),
            "report_html": str(self.workdir / "report.html"),
        }
        doc = report.as_json(records, meta)
        (self.workdir / "report.json").write_text(report.dumps(doc))
        (self.workdir / "report.html").write_text(report.as_html(records, meta))
        self.say(summary)
        self.say(f"report: {self.workdir / 'report.html'} and report.json beside it")
        return doc


ROLLOUTS = (
    ("good", GOOD_IMAGE, "Succeeded"),
    ("subtle", SUBTLE_IMAGE, "RolledBack"),
    ("bad", BAD_IMAGE, "RolledBack"),
)


def _evidence(view: object) -> dict[str, dict[str, Any]]:
    """The rollout's compare evidence as the API shows it (``compare`` in the rollout view),
    kept per check: e-value, bound, and what each side served since the check's baseline."""
    if not isinstance(view, dict):
        return {}
    return {str(k): v for k, v in view.items() if isinstance(v, dict)}


def _alert_rules(window: str) -> str:
    rule = {
        "alert": "CanaryErrorRateHigh",
        "expr": (
            f'sum(rate(http_requests_total{{job="{TARGET}",deployment="canary",status=~"5.."}}'
            f'[{window}])) / sum(rate(http_requests_total{{job="{TARGET}",'
            f'deployment="canary"}}[{window}])) > 0.05'
        ),
        "labels": {"severity": "critical", "target": TARGET},
        "annotations": {"summary": "the canary fails more than 5% of its requests"},
    }
    return yaml.safe_dump({"groups": [{"name": "canaryd-demo", "rules": [rule]}]})


def run(fast: bool, workdir: Path | None, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 when the good version was promoted and the bad one rolled back."""
    directory = workdir or Path(tempfile.mkdtemp(prefix="canaryd-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr if as_json else out
    tour = Tour(directory.resolve(), fast, progress)
    # Ctrl-C: ``asyncio.run`` cancels ``tour.run``, whose ``finally`` stops canaryd and every
    # process the demo started (by pid), then raises KeyboardInterrupt, which ``cli.main``
    # (``ctl.quiet``) turns into exit 130 without a traceback. canaryd's own supervisor is
    # told to leave SIGINT alone: stopping on its own, it would make the tour fail mid-way
    # ("canaryd stopped during the demo") instead of being interrupted.
    try:
        doc = asyncio.run(tour.run())
    except stack.StackError as exc:
        print(f"canaryd demo: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(doc, indent=2), file=out)
    return 0 if doc["ok"] else 1
