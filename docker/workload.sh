#!/usr/bin/env bash
# The compose stack's workload: one transaction every ${WORKLOAD_INTERVAL:-0.2} seconds on the
# source, round-robin over the tenants — a sign-up with a contact channel, a profile edit, and
# now and then a verification, a user turning anonymous (leaving the `users` mapping) or a
# deletion. Connects with the PG* variables of its service.
set -euo pipefail
tenants=(00000000-0000-0000-0000-00000000000a 00000000-0000-0000-0000-00000000000b 00000000-0000-0000-0000-00000000000c)
round=0
until psql -qtAc 'SELECT 1' >/dev/null 2>&1; do sleep 1; done
echo "workload: writing to ${PGHOST}/${PGDATABASE}"
while true; do
  t=${tenants[$((round % 3))]}
  pick="(SELECT id FROM users WHERE tenancy_id = '$t' ORDER BY random() LIMIT 1)"
  sql="BEGIN;
    WITH u AS (INSERT INTO users (tenancy_id, email, display_name)
               VALUES ('$t', 'User$round@Example.com', 'User $round') RETURNING tenancy_id, id)
    INSERT INTO contact_channels (tenancy_id, user_id, kind, value)
    SELECT tenancy_id, id, 'email', 'user$round@example.com' FROM u;
    UPDATE users SET display_name = 'User ' || id || ' (edit $round)' WHERE tenancy_id = '$t' AND id = $pick;"
  if (( round % 3 == 0 )); then
    sql+=" UPDATE contact_channels SET is_verified = NOT is_verified WHERE tenancy_id = '$t'
             AND id = (SELECT id FROM contact_channels WHERE tenancy_id = '$t' ORDER BY random() LIMIT 1);"
  fi
  if (( round % 4 == 1 )); then
    sql+=" UPDATE users SET is_anonymous = NOT is_anonymous WHERE tenancy_id = '$t' AND id = $pick;"
  fi
  if (( round % 5 == 2 )); then
    sql+=" DELETE FROM users WHERE tenancy_id = '$t' AND id = $pick;"
  fi
  psql -qv ON_ERROR_STOP=1 -c "$sql COMMIT;" >/dev/null
  round=$((round + 1))
  (( round % 100 == 0 )) && echo "workload: $round transactions"
  sleep "${WORKLOAD_INTERVAL:-0.2}"
done
