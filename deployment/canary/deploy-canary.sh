#!/usr/bin/env bash
# deploy-canary.sh — the MATRIZ runbook's commands, mapped onto canaryctl (SPEC §5.1).
#
# The runbook's commands keep working word for word; canaryd does the work. Which target they act
# on is decided once, in resolve_target, from $CANARY_TARGET, --platform and the targets the
# daemon's config has (asked with `canaryctl status -o json`), so that the runbook's commands work
# against every shipped config: config/canaryd.yaml names the runbook's target
# (lukhas-matriz-orchestrator), config/observe-only.yaml has one target (matriz).
# $KUBECTL_CONTEXT (the runbook's region) narrows the choice to the targets whose cluster is that
# kubeconfig context (kube_context in the listing: the target's kubernetes.context, else the
# daemon's, else $CANARYD_KUBE_CONTEXT of the canaryd serving it).
# canaryctl reads $CANARYD_URL and $CANARYD_TOKEN as usual. Exit codes are canaryctl's.
set -euo pipefail

readonly PROG="${0##*/}"
readonly RUNBOOK_TARGET="lukhas-matriz-orchestrator"
readonly PLATFORMS="kubernetes|docker|none" # canaryd's platform kinds (platform.kind)
CANARYCTL="${CANARYCTL:-canaryctl}"
TARGET=""

usage() {
    cat <<USAGE
Usage: $PROG COMMAND [OPTIONS]

Commands:
  start --image=IMAGE [--traffic=N] [--policy=NAME] [--supersede] [--monitoring]
                  canaryctl start TARGET --image IMAGE [--traffic N] [--policy NAME]:
                  a canary of IMAGE with N% of the traffic first (default: the policy's
                  first stage); --monitoring then follows it live (canaryctl watch TARGET)
                  and exits with its outcome (10 if it was rolled back). A rollout already
                  active is a conflict (exit 7) unless --supersede: then it is rolled back
                  and this one starts
  status          canaryctl status TARGET: where the rollout stands
  promote [--full]
                  canaryctl promote TARGET --full: promote the canary to stable now
                  (straight to 100%, then the stable runs the new version)
  promote --step  canaryctl promote TARGET: skip the current stage's wait only
  rollback [--reason=TEXT]
                  canaryctl rollback TARGET [--reason TEXT]: back to stable now
                  (alias: abort)
  cleanup         canaryctl cleanup TARGET: remove canary artefacts, reset the state
  watch           canaryctl watch TARGET: follow the rollout live

The target (TARGET above):
  \$CANARY_TARGET if set. Otherwise the daemon is asked for its targets: the runbook's
  "$RUNBOOK_TARGET" if its config has it, else its only target; with several
  and none of them the runbook's, set CANARY_TARGET (exit 2).

--platform=kubernetes|docker|none (any command; the runbook's Docker Compose form):
  The platform is not chosen here but by the target's entry in canaryd's config
  (platform.kind). --platform picks that entry: the target on that platform, by the rule
  above among the targets whose platform.kind it is; with CANARY_TARGET set, that target's
  platform.kind must be it. When no target fits, the command is refused with a message
  naming the targets and their platforms (exit 6), and nothing is changed.

Environment:
  CANARY_TARGET   the target (see above)
  CANARYD_URL, CANARYD_TOKEN
                  passed to canaryctl (the daemon's URL, an API token)
  CANARYCTL       the canaryctl to run (default: canaryctl on PATH)
  KUBECTL_CONTEXT the region's cluster: the command acts only on a target whose cluster is
                  this kubeconfig context (its kube_context in canaryctl status: the
                  target's kubernetes.context in canaryd's config, else the daemon's, else
                  \$CANARYD_KUBE_CONTEXT where canaryd runs). Among those, the rule above
                  picks; none is a refusal (exit 6) naming each target's context, so a
                  command meant for one region never lands in another. This script runs
                  no kubectl: canaryd talks to the cluster.

Exit codes: canaryctl's (see \`canaryctl --help\`): 0 done, 3 canaryd unreachable,
4 token, 5 role, 6 no such target, 7 conflict, 8 invalid, 10 watch saw a rollback; and
2 for a command line this script does not understand.
USAGE
}

die_usage() {
    echo "$PROG: $*" >&2
    usage >&2
    exit 2
}

refuse() {
    local code="$1"
    shift
    echo "$PROG: $*" >&2
    exit "$code"
}

# --opt=value or --opt value; sets VALUE and SHIFT_BY.
take_value() {
    local opt="$1" next="${2-}" has_next="$3"
    case "$opt" in
        *=*) VALUE="${opt#*=}"; SHIFT_BY=1 ;;
        *)
            [[ "$has_next" == 1 ]] || die_usage "option ${opt} needs a value"
            VALUE="$next"; SHIFT_BY=2 ;;
    esac
    [[ -n "$VALUE" ]] || die_usage "option ${opt%%=*} needs a value"
}

check_platform() {
    [[ "$1" =~ ^($PLATFORMS)$ ]] || die_usage "--platform must be one of ${PLATFORMS//|/, }, not '$1'"
}

# "NAME PLATFORM CONTEXT" per target, from `canaryctl status -o json` (indented JSON, one key a
# line; each target's "name" comes first). CONTEXT is its kube_context, "-" when null or absent.
list_targets() {
    local listing
    listing="$("$CANARYCTL" status -o json)" || exit $?
    awk '
        function flush() { if (name != "") print name, kind, ctx; name = "" }
        /^ *"name": "/     { flush(); name = $0; sub(/^ *"name": "/, "", name)
                             sub(/",?$/, "", name); kind = "-"; ctx = "-" }
        /^ *"platform": "/ { kind = $0; sub(/^ *"platform": "/, "", kind); sub(/",?$/, "", kind) }
        /^ *"kube_context": "/ { ctx = $0; sub(/^ *"kube_context": "/, "", ctx)
                                 sub(/",?$/, "", ctx) }
        END { flush() }
    ' <<<"$listing"
}

# Sets TARGET (see usage: "The target").
resolve_target() {
    local platform="$1"
    if [[ -n "${CANARY_TARGET-}" && -z "$platform" && -z "${KUBECTL_CONTEXT-}" ]]; then
        TARGET="$CANARY_TARGET"
        return
    fi
    local listing
    listing="$(list_targets)" || exit $?
    local -a all=() fits=()
    local name kind ctx want="${KUBECTL_CONTEXT-}"
    while read -r name kind ctx; do
        [[ -n "$name" ]] || continue
        if [[ -n "$want" ]]; then
            all+=("$name on $kind (context $(shown_context "$ctx"))")
        else
            all+=("$name on $kind")
        fi
        if [[ -n "${CANARY_TARGET-}" && "$name" == "$CANARY_TARGET" ]]; then
            [[ -z "$platform" || "$kind" == "$platform" ]] || refuse 6 "--platform=$platform:" \
                "target '$CANARY_TARGET' runs on platform '$kind' (platform.kind in canaryd's" \
                "config); drop --platform or give the platform it runs on"
            [[ -z "$want" || "$ctx" == "$want" ]] || refuse 6 "KUBECTL_CONTEXT=$want: target" \
                "'$CANARY_TARGET' is on cluster context $(shown_context "$ctx") (kubernetes.context in" \
                "canaryd's config, or \$CANARYD_KUBE_CONTEXT); point CANARYD_URL at the canaryd" \
                "of $want or unset KUBECTL_CONTEXT"
            TARGET="$CANARY_TARGET"
            return
        fi
        [[ -n "$platform" && "$kind" != "$platform" ]] && continue
        [[ -n "$want" && "$ctx" != "$want" ]] && continue
        fits+=("$name")
    done <<<"$listing"
    local known="canaryd's targets: $(joined "${all[@]}")"
    [[ -z "${CANARY_TARGET-}" ]] || refuse 6 "no target '$CANARY_TARGET' in canaryd's config ($known)"
    local where="${platform:+ on platform '$platform'}${want:+ on cluster context '$want'}"
    case "${#fits[@]}" in
        0) refuse 6 "no target${where} in canaryd's config ($known)" ;;
        1) TARGET="${fits[0]}" ;;
        *)
            for name in "${fits[@]}"; do
                [[ "$name" != "$RUNBOOK_TARGET" ]] || { TARGET="$name"; return; }
            done
            refuse 2 "several targets${where} ($(joined "${fits[@]}")) and none is" \
                "'$RUNBOOK_TARGET': set CANARY_TARGET to the one meant"
            ;;
    esac
}

# A context as the listing gave it, "default" for "-" (null: kubeconfig's current or in-cluster).
shown_context() {
    if [[ "$1" == - ]]; then echo default; else echo "$1"; fi
}

# "a, b, c" ("none" for no words).
joined() {
    [[ $# -gt 0 ]] || { echo none; return; }
    local out="$1" word
    shift
    for word in "$@"; do out+=", $word"; done
    echo "$out"
}

main() {
    [[ $# -gt 0 ]] || die_usage "a command is needed"
    local command="$1"
    shift
    case "$command" in
        -h|--help|help) usage; exit 0 ;;
        start|status|promote|rollback|abort|cleanup|watch) ;;
        *) die_usage "unknown command '$command'" ;;
    esac

    local image="" traffic="" policy="" reason="" platform="" monitoring=0 step=0 full=0
    local supersede=0
    while [[ $# -gt 0 ]]; do
        local has_next=0
        [[ $# -gt 1 ]] && has_next=1
        case "$1" in
            -h|--help) usage; exit 0 ;;
            --platform|--platform=*)
                take_value "$1" "${2-}" "$has_next"; check_platform "$VALUE"
                platform="$VALUE"; shift "$SHIFT_BY" ;;
            --image|--image=*)
                [[ "$command" == start ]] || die_usage "--image only goes with start"
                take_value "$1" "${2-}" "$has_next"; image="$VALUE"; shift "$SHIFT_BY" ;;
            --traffic|--traffic=*)
                [[ "$command" == start ]] || die_usage "--traffic only goes with start"
                take_value "$1" "${2-}" "$has_next"; traffic="$VALUE"; shift "$SHIFT_BY"
                [[ "$traffic" =~ ^[0-9]+$ ]] || die_usage "--traffic must be a whole percentage"
                ;;
            --policy|--policy=*)
                [[ "$command" == start ]] || die_usage "--policy only goes with start"
                take_value "$1" "${2-}" "$has_next"; policy="$VALUE"; shift "$SHIFT_BY" ;;
            --reason|--reason=*)
                [[ "$command" == rollback || "$command" == abort ]] \
                    || die_usage "--reason only goes with rollback"
                take_value "$1" "${2-}" "$has_next"; reason="$VALUE"; shift "$SHIFT_BY" ;;
            --monitoring)
                [[ "$command" == start ]] || die_usage "--monitoring only goes with start"
                monitoring=1; shift ;;
            --supersede)
                [[ "$command" == start ]] || die_usage "--supersede only goes with start"
                supersede=1; shift ;;
            --full|--step)
                [[ "$command" == promote ]] || die_usage "$1 only goes with promote"
                [[ "$1" == --full ]] && full=1 || step=1
                shift ;;
            *) die_usage "unknown option '$1' for $command" ;;
        esac
    done
    [[ "$command" != start || -n "$image" ]] || die_usage "start needs --image=IMAGE"
    [[ "$full$step" != 11 ]] || die_usage "promote takes --full or --step, not both"

    resolve_target "$platform"

    local -a args
    case "$command" in
        start)
            args=(start "$TARGET" --image "$image")
            [[ -z "$traffic" ]] || args+=(--traffic "$traffic")
            [[ -z "$policy" ]] || args+=(--policy "$policy")
            [[ "$supersede" == 0 ]] || args+=(--supersede)
            "$CANARYCTL" "${args[@]}"
            if [[ "$monitoring" == 1 ]]; then
                exec "$CANARYCTL" watch "$TARGET"
            fi
            ;;
        status) exec "$CANARYCTL" status "$TARGET" ;;
        promote)
            args=(promote "$TARGET")
            [[ "$step" == 1 ]] || args+=(--full)
            exec "$CANARYCTL" "${args[@]}"
            ;;
        rollback|abort)
            args=(rollback "$TARGET")
            [[ -z "$reason" ]] || args+=(--reason "$reason")
            exec "$CANARYCTL" "${args[@]}"
            ;;
        cleanup) exec "$CANARYCTL" cleanup "$TARGET" ;;
        watch) exec "$CANARYCTL" watch "$TARGET" ;;
    esac
}

main "$@"
