#!/usr/bin/env bash
# The canvas REST shim from the shell: create a small team, move a node, restart, set a secret,
# read the event log, then delete the team (with the children confirmation).
# Usage: molecule serve --data-dir ./molecule-data &   then   bash examples/canvas-api.sh
set -euo pipefail
DATA_DIR=${DATA_DIR:-./molecule-data}
URL=${MOLECULE_URL:-http://127.0.0.1:8080}
TOKEN=$(cat "$DATA_DIR/token")
api() { curl -sS -X "$1" "$URL$2" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' ${3:+-d "$3"}; echo; }
id_of() { sed -n 's/.*"id":"\([^"]*\)".*/\1/p'; }

LEAD=$(api POST /workspaces '{"name":"Docs Lead","role":"lead","tier":2,"runtime":"echo","x":40,"y":40}' | id_of)
WRITER=$(api POST /workspaces "{\"name\":\"Docs Writer\",\"role\":\"writer\",\"parent_id\":\"$LEAD\"}" | id_of)
echo "lead $LEAD, writer $WRITER"
api GET "/workspaces/$LEAD"
api PATCH "/workspaces/$LEAD" '{"x":120,"y":60,"collapsed":false}'   # an annotation: no restart
api POST "/workspaces/$WRITER/restart"
api PUT "/workspaces/$WRITER/secrets" '{"key":"STYLE_GUIDE","value":"plain words"}'
api GET "/workspaces/$WRITER/secrets"                                 # names and has_value only
api GET "/events/$LEAD?limit=5"
api DELETE "/workspaces/$LEAD"                                        # 409: lists the children
api DELETE "/workspaces/$LEAD?confirm=true"                           # {"status":"removed","cascade_deleted":1}
