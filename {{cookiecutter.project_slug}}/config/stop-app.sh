#!/bin/sh
# eep: the end of `invoke stop` for {{ cookiecutter.project_slug }}, once supervisord has
# stopped uWSGI. Installed as {{ cookiecutter.__conf_dir }}/stop-app (root:root 0755) and run
# by the deploy account through its sudo rules AS THE APP USER, so it can only
# signal the app's own processes. The broker is never touched: queued tasks stay.
#   stop-app warm  TERM, once, to each process the app started that is not a child
#                  of another app process: Celery's warm shutdown (running tasks
#                  finish, no new ones start). uWSGI leaves a daemon it tracks by
#                  pidfile running when it stops, so this is what stops Celery.
#   stop-app now   KILL every process of the app: running tasks are lost.
set -u
case "${1:-}" in
    warm) signal=TERM ;;
    now) signal=KILL ;;
    *) echo "usage: stop-app warm|now" >&2; exit 2 ;;
esac
uid=$(id -u)
for pid in $(pgrep -u "$uid"); do
    [ "$pid" = "$$" ] && continue
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "redis-server" ] && continue
    if [ "$signal" = TERM ]; then
        # Pool children are left to their worker: a TERM would end their task.
        ppid=$(awk '/^PPid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
        [ "$(stat -c %u "/proc/$ppid" 2>/dev/null)" = "$uid" ] && continue
    fi
    kill -s "$signal" "$pid" 2>/dev/null
done
exit 0
