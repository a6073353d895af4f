"""The engine's half of SPEC §8 (issue 13, points 1 and 2): the verify gate before anything is
created, and the pinned reference used from the start to the promoted stable. Pure, synchronous,
table-driven where it helps: the real commands and the real engine are in
``tests/runtime/test_verify_commands.py``, ``tests/daemon/test_verify_serve.py`` and
``tests/platforms/test_docker_pinning.py``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from canaryd.core import stages, supply
from canaryd.core.codec import rollout_from_dict, rollout_to_dict
from canaryd.core.model import (
    ActionKind,
    Cause,
    Command,
    CommandKind,
    EffectKind,
    Findings,
    Observed,
    Phase,
    Rollout,
    Stuck,
    Verification,
)
from canaryd.core.rules import AdmissionVerdict, admit
from support.enginekit import make_policy, world

DIGEST = "sha256:" + "ab" * 32
PINNED = f"registry.example/matriz@{DIGEST}"
NOTHING = Observed(weight=0, canary_ready=False, canary_present=False, stable_image="v1")


def gated(pinned: str | None = None) -> Rollout:
    s, first = stages.start("r1", "svc", "v2", make_policy(), 0.0, pinned=pinned, verify=True)
    assert first.evidence.get("verify") is True
    return s


def passed() -> Findings:
    return Findings(verification=Verification(True, "1 verify command passed", {"commands": []}))


def failed() -> Findings:
    evidence = {"commands": [{"argv": ["cosign", "verify", "v2"], "exit_code": 1}]}
    return Findings(verification=Verification(False, "cosign exited with code 1", evidence))


def test_nothing_is_created_while_the_gate_is_closed_and_no_deadline_runs() -> None:
    s = gated()
    assert stages.verifying(s)
    for now in (0.0, 10.0, 10_000.0):  # the commands' own timeout bounds the gate
        s, acts = stages.decide(s, NOTHING, Findings(), now)
        assert acts == () and s.phase is Phase.PENDING
        assert stages.reconcile(s, NOTHING) == ()
    # even a canary someone else left running and ready does not start stage 1
    ready = replace(NOTHING, canary_present=True, canary_ready=True)
    s, acts = stages.decide(s, ready, Findings(), 5.0)
    assert s.phase is Phase.PENDING and s.weight == 0 and acts == ()
    assert [e.kind for e in stages.reconcile(s, ready)] == [EffectKind.REMOVE_CANARY]


def test_a_passed_verification_opens_the_gate_and_the_pending_deadline_starts_then() -> None:
    s, acts = stages.decide(gated(PINNED), NOTHING, passed(), 500.0)
    assert [a.cause for a in acts] == [Cause.VERIFIED]
    assert acts[0].evidence["image"] == PINNED and acts[0].phase is Phase.PENDING
    assert not stages.verifying(s)
    effects = stages.reconcile(s, NOTHING)
    assert [(e.kind, e.image) for e in effects] == [(EffectKind.ENSURE_CANARY, PINNED)]
    limit = s.policy.limits.progress_deadline
    assert stages.next_wakeup(s) == 500.0 + limit  # not 0 + limit: verifying took 500 s


def test_a_failed_verification_ends_the_rollout_failed_before_any_traffic() -> None:
    """Not RolledBack: nothing was deployed, so nothing is rolled back (SPEC §3). A Failed that
    is over (``Stuck.REFUSED``): nothing retried, no command applies, the target is free."""
    s, acts = stages.decide(gated(), NOTHING, failed(), 3.0)
    assert [(a.kind, a.cause, a.phase) for a in acts] == [
        (ActionKind.FAILED, Cause.VERIFY_FAILED, Phase.FAILED)
    ]
    reason = "verification of v2 failed: cosign exited with code 1"
    assert acts[0].reason == reason and acts[0].weight == 0
    assert acts[0].evidence["commands"] == [{"argv": ["cosign", "verify", "v2"], "exit_code": 1}]
    assert s.phase is Phase.FAILED and s.stuck is Stuck.REFUSED and s.ended
    assert s.weight == 0 and s.message == reason and s.finished_at == 3.0
    assert s.rollback_reason is None and not s.rolling_back and not s.promoting
    assert not stages.verifying(s) and stages.next_wakeup(s) is None
    assert stages.reconcile(s, NOTHING) == ()  # nothing was created, nothing to undo
    # a canary the target still had (a superseded rollout's, handed over) is removed
    left = replace(NOTHING, canary_present=True, canary_ready=True)
    assert [e.kind for e in stages.reconcile(s, left)] == [EffectKind.REMOVE_CANARY]
    # time passing and an operator change nothing; a new start is admitted
    later, more = stages.decide(s, left, Findings(), 10_000.0)
    assert later == s and more == ()
    for kind in CommandKind:
        refusal = stages.check_command(s, Command(kind, weight=50))
        assert refusal is not None and "already ended (Failed)" in refusal
    assert admit(s, "v2", s.policy, []).verdict is AdmissionVerdict.START
    reloaded = rollout_from_dict(rollout_to_dict(s))
    assert reloaded == s and reloaded.stuck is Stuck.REFUSED


def test_a_failed_retrying_rollout_is_not_over() -> None:
    """The other Failed states keep retrying: not ended, the target stays taken."""
    s = replace(gated(), verify_pending=False, phase=Phase.FAILED, message="stuck")
    assert s.stuck is Stuck.PROMOTION and not s.ended
    back = replace(s, rollback_reason="alert")
    assert back.stuck is Stuck.ROLLBACK and not back.ended
    assert admit(back, "v3", s.policy, []).verdict is not AdmissionVerdict.START


def test_a_restart_while_verifying_verifies_again() -> None:
    """The gate is in the record: a daemon killed while the commands ran finds it closed."""
    s = gated()
    reloaded = rollout_from_dict(rollout_to_dict(s))
    assert reloaded == s and stages.verifying(reloaded)
    assert stages.reconcile(reloaded, NOTHING) == ()


def test_records_stored_before_pinning_load_unpinned_and_ungated() -> None:
    old = rollout_to_dict(stages.start("r0", "svc", "v2", make_policy(), 0.0)[0])
    del old["pinned"], old["verify_pending"]
    s = rollout_from_dict(old)
    assert s.pinned is None and not s.verify_pending and s.ref == "v2"


@pytest.mark.parametrize(
    ("kind", "open_"),
    [
        (CommandKind.ROLLBACK, True),
        (CommandKind.CLEANUP, True),
        (CommandKind.PAUSE, False),
        (CommandKind.RESUME, False),
        (CommandKind.PROMOTE, False),
        (CommandKind.PROMOTE_FULL, False),
        (CommandKind.SET_WEIGHT, False),
    ],
)
def test_only_a_rollback_or_a_cleanup_overtakes_the_gate(kind: CommandKind, open_: bool) -> None:
    refusal = stages.check_command(gated(), Command(kind, weight=50))
    if open_:
        assert refusal is None
    else:
        assert refusal is not None and "is being verified" in refusal


def test_a_verification_that_arrives_after_a_rollback_changes_nothing() -> None:
    s, _ = stages.decide(gated(), NOTHING, Findings(commands=(Command(CommandKind.ROLLBACK),)), 1)
    assert not stages.verifying(s)
    after, acts = stages.decide(s, NOTHING, passed(), 2.0)
    assert Cause.VERIFIED not in [a.cause for a in acts]
    assert all(e.kind is not EffectKind.ENSURE_CANARY for e in stages.reconcile(after, NOTHING))


def test_promotion_puts_the_pinned_reference_on_stable_not_the_tag() -> None:
    s, start = stages.start("r1", "svc", "v2", make_policy(), 0.0, pinned=PINNED)
    assert start.evidence["pinned"] == PINNED and PINNED in start.reason
    s, _ = stages.decide(s, world(s), Findings(commands=(Command(CommandKind.PROMOTE_FULL),)), 1)
    assert s.phase is Phase.PROMOTING
    tagged = world(s, stable_image="v2")  # the tag, moved or not, is not what was judged
    assert [(e.kind, e.image) for e in stages.reconcile(s, tagged)] == [
        (EffectKind.UPDATE_STABLE, PINNED)
    ]
    held, _ = stages.decide(s, tagged, Findings(), 2.0)
    assert held.promote_step is s.promote_step  # stable does not run the judged bytes yet
    moved, acts = stages.decide(s, world(s, stable_image=PINNED), Findings(), 2.0)
    assert [a.cause for a in acts] == [Cause.STABLE_UPDATED] and moved.promote_step is not None


def test_a_start_already_pinned_records_no_second_reference() -> None:
    s, _ = stages.start("r1", "svc", PINNED, make_policy(), 0.0, pinned=PINNED)
    assert s.pinned is None and s.ref == PINNED


@pytest.mark.parametrize(
    ("image", "digest", "pinned"),
    [
        (PINNED, True, True),
        (f"registry.example:5000/team/app:v2@{DIGEST}", True, True),
        (DIGEST, False, True),  # an engine's image ID: pinned, but not a digest a person gives
        ("registry.example/matriz:v2", False, False),
        ("matriz@sha256:" + "AB" * 32, False, False),  # upper-case hex is not a digest
        ("matriz@sha256:" + "ab" * 31, False, False),
        (f"matriz@{DIGEST}\n", False, False),
    ],
)
def test_what_counts_as_pinned(image: str, digest: bool, pinned: bool) -> None:
    assert supply.has_digest(image) is digest
    assert supply.is_pinned(image) is pinned
    assert (supply.digest_refusal("matriz", image) is None) is digest


def test_the_refusal_names_the_target_the_key_and_the_image() -> None:
    refusal = supply.digest_refusal("matriz", "matriz:v2")
    assert refusal is not None
    assert "matriz" in refusal and "require_digest" in refusal and "'matriz:v2'" in refusal


def test_image_is_substituted_in_every_argument_and_nothing_else_is_read() -> None:
    argv = ["scan", "--image={image}", "{image}", "$(rm -rf /)", "{other}"]
    assert supply.substitute(argv, "a b;c") == (
        "scan",
        "--image=a b;c",
        "a b;c",
        "$(rm -rf /)",
        "{other}",
    )


def late_pinned() -> Rollout:
    s, first = stages.start("r1", "svc", "v2", make_policy(), 0.0, pin_on_ready=True)
    assert s.pin_on_ready and s.pinned is None and first.evidence["pin_on_ready"] is True
    return s


def test_a_late_pin_is_recorded_with_the_first_stage_and_promotion_deploys_it() -> None:
    """kubernetes: the tag is pinned from the ready canary's pods, in the same decision that
    sends it its first traffic, and used from then on, whatever ``canary_pin`` says later."""
    s = late_pinned()
    ready = replace(NOTHING, canary_present=True, canary_ready=True)
    held, acts = stages.decide(s, replace(ready, pin_problem="no pod labelled …"), Findings(), 1)
    assert held.phase is Phase.PENDING and acts == () and stages.pinning(held)
    s, acts = stages.decide(held, replace(ready, canary_pin=PINNED), Findings(), 2.0)
    assert [a.cause for a in acts] == [Cause.PINNED, Cause.CANARY_READY]
    assert acts[0].evidence == {"image": "v2", "pinned": PINNED}
    assert s.phase is Phase.PROGRESSING and s.pinned == PINNED and not s.pin_on_ready
    assert not stages.pinning(s) and rollout_from_dict(rollout_to_dict(s)) == s
    moved = "registry.example/matriz@sha256:" + "cd" * 32  # the tag moved: pods say otherwise
    s, _ = stages.decide(s, world(s, canary_pin=moved), Findings(), 3.0)
    s, _ = stages.decide(s, world(s), Findings(commands=(Command(CommandKind.PROMOTE_FULL),)), 4)
    assert s.pinned == PINNED and [(e.kind, e.image) for e in stages.reconcile(s, world(s))] == [
        (EffectKind.UPDATE_STABLE, PINNED)
    ]


def test_a_late_pin_never_given_rolls_back_at_the_pending_deadline_saying_why() -> None:
    s = late_pinned()
    ready = replace(NOTHING, canary_present=True, canary_ready=True, pin_problem="pods disagree")
    limit = s.policy.limits.progress_deadline
    s, acts = stages.decide(s, ready, Findings(), limit)
    assert [a.cause for a in acts] == [Cause.CANARY_NOT_READY]
    assert (
        acts[0].reason == f"the canary's image could not be pinned within {limit:g}s: pods disagree"
    )
    assert acts[0].evidence["pin_problem"] == "pods disagree" and s.weight == 0


def test_a_start_that_names_a_digest_or_was_pinned_does_not_wait_for_a_late_pin() -> None:
    s, _ = stages.start("r1", "svc", "v2", make_policy(), 0.0, pinned=PINNED, pin_on_ready=True)
    assert not s.pin_on_ready and not stages.pinning(s)
    gated_late, _ = stages.start(
        "r2", "svc", "v2", make_policy(), 0.0, verify=True, pin_on_ready=True
    )
    assert not stages.pinning(gated_late)  # the verify gate first; the pin once the canary runs
