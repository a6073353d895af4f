#!/usr/bin/env bash
# deploy-canary.sh — the MATRIZ runbook's commands, mapped onto canaryctl (SPEC §5.1).
#
# The runbook's commands keep working word for word; canaryd does the work. The target comes
# from $CANARY_TARGET (default lukhas-matriz-orchestrator); canaryctl reads $CANARYD_URL and
# $CANARYD_TOKEN as usual. Exit codes are canaryctl's (see `canaryctl --help`), plus 2 for a
# command line this script does not understand.
set -euo pipefail

readonly PROG="${0##*/}"
TARGET="${CANARY_TARGET:-lukhas-matriz-orchestrator}"
CANARYCTL="${CANARYCTL:-canaryctl}"

usage() {
    cat <<USAGE
Usage: $PROG COMMAND [OPTIONS]

Commands (target: \$CANARY_TARGET, now "$TARGET"):
  start --image=IMAGE [--traffic=N] [--policy=NAME] [--monitoring]
                  start a canary of IMAGE with N% of the traffic first (default: the
                  policy's first stage); --monitoring then follows it live
                  (canaryctl watch) and exits with its outcome
  status          where the rollout stands
  promote [--full]
                  skip the current stage's wait (--full: straight to 100%)
  rollback [--reason=TEXT]
                  roll back to stable now (alias: abort)
  cleanup         remove canary artefacts and reset the target's state
  watch           follow the rollout live

Every command also accepts --platform=kubernetes|docker for compatibility with the old runbook.
It is validated but does not choose anything: the platform (and router) is fixed by the
target's entry in canaryd's config (platform.kind), so the same command works on both.

Environment: CANARY_TARGET (target name), CANARYD_URL, CANARYD_TOKEN (passed to canaryctl),
CANARYCTL (the canaryctl to run, default: canaryctl on PATH).
USAGE
}

die_usage() {
    echo "$PROG: $*" >&2
    usage >&2
    exit 2
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
    case "$1" in
        kubernetes|docker) ;;
        *) die_usage "--platform must be kubernetes or docker, not '$1'" ;;
    esac
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

    local image="" traffic="" policy="" reason="" monitoring=0 full=0
    while [[ $# -gt 0 ]]; do
        local has_next=0
        [[ $# -gt 1 ]] && has_next=1
        case "$1" in
            -h|--help) usage; exit 0 ;;
            --platform|--platform=*)
                take_value "$1" "${2-}" "$has_next"; check_platform "$VALUE"; shift "$SHIFT_BY" ;;
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
            --full)
                [[ "$command" == promote ]] || die_usage "--full only goes with promote"
                full=1; shift ;;
            *) die_usage "unknown option '$1' for $command" ;;
        esac
    done

    local -a args
    case "$command" in
        start)
            [[ -n "$image" ]] || die_usage "start needs --image=IMAGE"
            args=(start "$TARGET" --image "$image")
            [[ -z "$traffic" ]] || args+=(--traffic "$traffic")
            [[ -z "$policy" ]] || args+=(--policy "$policy")
            "$CANARYCTL" "${args[@]}"
            if [[ "$monitoring" == 1 ]]; then
                exec "$CANARYCTL" watch "$TARGET"
            fi
            ;;
        status) exec "$CANARYCTL" status "$TARGET" ;;
        promote)
            args=(promote "$TARGET")
            [[ "$full" == 0 ]] || args+=(--full)
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
