#!/bin/sh
# Prints every PromQL expression of postsift.json (the panels' targets) and alerts.yml (the
# rules' `expr:`), one per line, each once, in a form Prometheus itself evaluates:
#   $__rate_interval / ${__rate_interval}  ->  5m
#   $instance / ${instance}                ->  .*   (panels write instance=~"$instance")
# Each line is SOURCE<TAB>EXPR, SOURCE being "postsift.json:<panel title>" or
# "alerts.yml:<alert name>"; with --plain, only EXPR.
#
# Usage: list-exprs.sh [--plain] [--dashboard | --alerts]   (default: both, dashboard first)
#
# Needs jq (Debian package jq) and a POSIX awk; no python. Exits non-zero, naming the problem
# on stderr, if an expression would still hold a Grafana variable after the substitutions, if
# $instance is used other than as instance=~"$instance", or if an alert expr is not on one line.
#
# Note for tests: dashboard expressions return a series on any running, scraped postsift
# (every counter is pre-initialised; quantiles and ratios are NaN without traffic, which is
# still a series). Alert expressions are conditions: they return nothing while all is well.
set -eu

here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
what=all
plain=no
for arg in "$@"; do
    case "$arg" in
        -p|--plain) plain=yes ;;
        -d|--dashboard) what=dashboard ;;
        -a|--alerts) what=alerts ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: $0 [--plain] [--dashboard | --alerts]" >&2; exit 64 ;;
    esac
done
tab=$(printf '\t')

dashboard_exprs() {
    command -v jq >/dev/null 2>&1 || {
        echo "list-exprs.sh: jq is needed (apt-get install jq)" >&2
        return 1
    }
    jq -r '
        [.panels[]?, (.panels[]? | .panels[]?)]
        | .[] | (.title // "" | gsub("\\s+"; " ")) as $title | .targets[]? | .expr // empty
        | gsub("\\s+"; " ") | sub("^ "; "") | sub(" $"; "")
        | select(. != "")
        | if test("\\$\\{?instance\\}?") and
             (gsub("instance=~\"(\\$instance|\\$\\{instance\\})\""; "") | test("\\$\\{?instance\\b"))
          then error("$instance outside instance=~\"$instance\": " + .) else . end
        | gsub("\\$\\{__rate_interval\\}|\\$__rate_interval\\b"; "5m")
        | gsub("\\$\\{instance\\}|\\$instance\\b"; ".*")
        | "postsift.json:\($title)\t\(.)"
    ' "$here/postsift.json"
}

alert_exprs() {
    awk '
        function indent(s) { match(s, /^ */); return RLENGTH }
        # A more-indented line after a plain scalar continues it: refuse multi-line exprs.
        open && $0 !~ /^[[:space:]]*(#.*)?$/ {
            if (indent($0) > open) {
                printf "%s:%d: expr continues on this line; keep every expr on one line\n", FILENAME, FNR > "/dev/stderr"
                bad = 1
            }
            open = 0
        }
        /^[[:space:]]*(- )?(alert|record):/ {
            name = $0; sub(/^[[:space:]]*(- )?(alert|record):[[:space:]]*/, "", name)
            sub(/[[:space:]]+#.*$/, "", name); gsub(/^["\047]|["\047]$/, "", name)
        }
        /^[[:space:]]*(- )?expr:/ {
            key = $0; sub(/expr:.*/, "", key); sub(/- $/, "  ", key)
            v = $0; sub(/^[[:space:]]*(- )?expr:[[:space:]]*/, "", v)
            if (v ~ /^[|>]/ || v == "") {
                printf "%s:%d: block or empty expr; keep every expr on one line\n", FILENAME, FNR > "/dev/stderr"
                bad = 1; next
            }
            if (v ~ /^\047/) {                      # single-quoted: strip, unescape doubled quotes
                sub(/[[:space:]]+#.*$/, "", v); sub(/[[:space:]]+$/, "", v)
                if (v !~ /\047$/ || length(v) < 2) {
                    printf "%s:%d: unterminated single-quoted expr\n", FILENAME, FNR > "/dev/stderr"
                    bad = 1; next
                }
                v = substr(v, 2, length(v) - 2); gsub(/\047\047/, "\047", v)
            } else if (v ~ /^"/) {
                printf "%s:%d: double-quoted expr not supported; use a plain or single-quoted scalar\n", FILENAME, FNR > "/dev/stderr"
                bad = 1; next
            } else {
                sub(/[[:space:]]+#.*$/, "", v); sub(/[[:space:]]+$/, "", v)
                open = indent(key)
            }
            print "alerts.yml:" name "\t" v
        }
        END { exit bad }
    ' "$here/alerts.yml"
}

out=$(
    if [ "$what" != alerts ]; then dashboard_exprs; fi
    if [ "$what" != dashboard ]; then alert_exprs; fi
)
# Anything Grafana-only left over ($__range, $__interval, another variable) is an error.
if printf '%s\n' "$out" | cut -f2- | grep -n '\$' >&2; then
    echo "list-exprs.sh: the expressions above still hold a Grafana variable" >&2
    exit 1
fi
# Each expression once (the first source that uses it), optionally without the source.
printf '%s\n' "$out" | awk -F "$tab" -v plain="$plain" '
    NF >= 2 && !seen[$2]++ { if (plain == "yes") print $2; else print }
'
