#!/bin/sh
# Validates everything in dashboards/ without a network or a running service:
#   - postsift.json is JSON, schemaVersion >= 39, has the datasource and instance variables,
#     every panel and target uses ${datasource} (no datasource uid anywhere else), every
#     metric selector has instance=~"$instance", only row/timeseries/stat panels, unique ids,
#     no overlapping panels;
#   - promtool check rules alerts.yml; promtool test rules alerts_test.yml;
#   - every expression printed by list-exprs.sh parses as PromQL (promtool checks them as
#     recording rules in a temporary file).
# Needs jq and promtool (Debian packages jq and prometheus). Exits non-zero on any failure.
set -eu

here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
cd "$here"
for tool in jq promtool; do
    command -v "$tool" >/dev/null 2>&1 || {
        case "$tool" in promtool) pkg=prometheus ;; *) pkg=$tool ;; esac
        echo "check.sh: $tool is needed (Debian package $pkg)" >&2
        exit 1
    }
done

echo "== postsift.json"
jq -e . postsift.json >/dev/null
jq -e -r '
    def fail(msg): error("postsift.json: " + msg);
    def flat: [.panels[], (.panels[] | .panels[]?)];
    . as $d
    | if ($d.schemaVersion // 0) < 39 then fail("schemaVersion below 39") else . end
    | if ([$d.templating.list[] | select(.name == "datasource" and .type == "datasource"
            and .query == "prometheus")] | length) != 1
      then fail("no datasource variable of type datasource, query prometheus") else . end
    | if ([$d.templating.list[] | select(.name == "instance" and .type == "query"
            and .datasource.uid == "${datasource}"
            and (.definition | test("^label_values\\(postsift_build_info, *instance\\)$")))]
            | length) != 1
      then fail("no instance variable label_values(postsift_build_info, instance)") else . end
    | if [($d.panels, $d.templating) | .. | objects | select(has("uid")) | .uid]
            | all(. == "${datasource}") | not
      then fail("a datasource uid other than ${datasource}") else . end
    | flat as $p
    | if ($p | map(.id) | unique | length) != ($p | length) then fail("duplicate panel ids") else . end
    | if [$p[] | select(.type as $t | ["row", "timeseries", "stat"] | index($t) | not)] | length > 0
      then fail("panel types other than row, timeseries, stat") else . end
    | if [$p[] | select(.title | test("alerts|\t"))] | length > 0
      then fail("a panel title with \"alerts\" or a tab (list-exprs.sh sources would be ambiguous)")
      else . end
    | if [$p[] | select(.datasource.uid != "${datasource}")] | length > 0
      then fail("panel without datasource ${datasource}: "
                + ([$p[] | select(.datasource.uid != "${datasource}") | .title] | join(", ")))
      else . end
    | [$p[] | select(.type != "row")] as $v
    | if [$v[] | select((.targets // []) | length == 0)] | length > 0
      then fail("panel without targets") else . end
    | if [$v[] | .targets[] | select(.datasource.uid != "${datasource}" or (.expr // "") == "")]
            | length > 0
      then fail("target without ${datasource} or without expr") else . end
    | [$v[] | .title as $t | .targets[] | .expr
       | [scan("(?:postsift|process)_[a-z_]+(?:\\{[^}]*\\})?")]
       | select(any(test("instance=~\"\\$instance\"") | not)) | "\($t): \(.)"] as $bad
    | if $bad | length > 0 then fail("selector without instance=~\"$instance\": " + ($bad | join("; ")))
      else . end
    | [$p[] | .gridPos] as $g
    | if [$g[] | select(.x < 0 or .w < 1 or .x + .w > 24 or .h < 1)] | length > 0
      then fail("panel outside the 24-column grid") else . end
    | [range(0; $g | length) as $i | range($i + 1; $g | length) as $j
       | select($g[$i].x < $g[$j].x + $g[$j].w and $g[$j].x < $g[$i].x + $g[$i].w
                and $g[$i].y < $g[$j].y + $g[$j].h and $g[$j].y < $g[$i].y + $g[$i].h)
       | "\($p[$i].title) / \($p[$j].title)"] as $overlap
    | if $overlap | length > 0 then fail("overlapping panels: " + ($overlap | join(", "))) else . end
    | "  OK: \($p | length) panels, \([$v[] | .targets[]] | length) queries"
' postsift.json

echo "== alerts.yml"
promtool check rules alerts.yml
echo "== alerts_test.yml"
promtool test rules alerts_test.yml

echo "== every expression of list-exprs.sh parses"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./list-exprs.sh --plain >"$tmp/exprs"
awk '
    BEGIN { print "groups:"; print "  - name: list-exprs"; print "    rules:" }
    { q = $0; gsub(/\047/, "\047\047", q)
      printf "      - record: list_exprs:expr_%d\n        expr: \047%s\047\n", NR, q }
' "$tmp/exprs" >"$tmp/rules.yml"
promtool check rules "$tmp/rules.yml"
echo "check.sh: all OK ($(wc -l <"$tmp/exprs") expressions)"
