#!/usr/bin/env bash
# The Gatehouse image's entry point: one command per process (README, "Deploying").
#
#   web        the portal: gunicorn -c controlplane/gunicorn.conf.py controlplane.wsgi
#   worker     Celery worker on the default queue `celery` (CELERY_WORKER_CONCURRENCY, default 2)
#   publisher  Celery worker on the config publishing queue GATEHOUSE_PUBLISH_QUEUE (default
#              publish), concurrency 1
#   beat       Celery beat: exactly one per deployment
#   ingest     manage.py ingest_usage: one or more, each its own consumer (default name
#              ingest-<host name>; pass --consumer NAME to choose)
#   gateway    python -m gateway --host GATEWAY_HOST (0.0.0.0) --port GATEWAY_PORT (8080)
#              --workers GATEWAY_WORKERS (1)
#   migrate    manage.py migrate --noinput, then exit (one-shot, before a release starts)
#   manage     manage.py with the arguments that follow (one-off administration)
#
# Arguments after the command are appended to its command line. The process is exec'ed, so it
# is the container's PID 1 and receives SIGTERM itself. The Celery arguments are those of
# scripts/run.py (celery_worker(), celery_beat()); tests/test_deploy_files.py keeps them equal.
#
# Secrets: the code reads NAME_FILE (a path whose content is the value) for DJANGO_SECRET_KEY,
# GATEHOUSE_KEK_<n>, GATEHOUSE_SIGNING_KEY, GATEHOUSE_GATEWAY_KEY, GATEHOUSE_SIGNING_PUBLIC_KEY,
# GATEHOUSE_METRICS_TOKEN, EMAIL_HOST_PASSWORD, REDIS_URL and GATEHOUSE_BROKER_URL. It reads
# DATABASE_URL only as a plain variable, so this script reads DATABASE_URL_FILE itself and
# exports DATABASE_URL (the file wins over the variable, as in the code).
#
# GATEHOUSE_ENTRYPOINT_DRY_RUN=1 prints the command line, one argument a line, instead of
# running it (tests/test_deploy_files.py). `entrypoint.sh commands` lists the commands.
set -euo pipefail

PROCESSES=(web worker publisher beat ingest gateway)
ONE_SHOT=(migrate manage)
PYTHON="${PYTHON:-python}"

usage() {
    local IFS="|"
    echo "usage: entrypoint.sh {${PROCESSES[*]}|${ONE_SHOT[*]}} [arguments...]" >&2
}

load_url_from_file() {
    local name="$1" file_variable="${1}_FILE"
    local path="${!file_variable:-}"
    [ -n "$path" ] || return 0
    if [ ! -r "$path" ]; then
        echo "entrypoint: ${file_variable}: cannot read ${path}" >&2
        exit 78  # EX_CONFIG
    fi
    local value
    value="$(<"$path")"
    value="${value#"${value%%[![:space:]]*}"}"  # surrounding whitespace goes, as the code's strip()
    value="${value%"${value##*[![:space:]]}"}"
    export "$name=$value"
    if [ -n "${GATEHOUSE_ENTRYPOINT_DRY_RUN:-}" ]; then
        echo "entrypoint: ${name} from ${file_variable}" >&2
    fi
}

celery_worker() {  # queue concurrency name -> CELERY_ARGUMENTS, as scripts/run.py's celery_worker()
    CELERY_ARGUMENTS=(-m celery -A controlplane worker -l info -Q "$1" --concurrency "$2"
        -n "$3@%h" --without-gossip --without-mingle --without-heartbeat)
}

run() {
    if [ -n "${GATEHOUSE_ENTRYPOINT_DRY_RUN:-}" ]; then
        printf '%s\n' "$@"
        exit 0
    fi
    exec "$@"
}

command="${1:-}"
if [ -z "$command" ]; then
    usage
    exit 64  # EX_USAGE
fi
shift

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [ "$command" = commands ]; then
    printf 'process %s\n' "${PROCESSES[@]}"
    printf 'one-shot %s\n' "${ONE_SHOT[@]}"
    exit 0
fi

load_url_from_file DATABASE_URL

case "$command" in
    web)
        run "$PYTHON" -m gunicorn -c controlplane/gunicorn.conf.py controlplane.wsgi "$@"
        ;;
    worker)
        celery_worker celery "${CELERY_WORKER_CONCURRENCY:-2}" worker
        run "$PYTHON" "${CELERY_ARGUMENTS[@]}" "$@"
        ;;
    publisher)
        # Concurrency 1, as under `make run`: nothing else waits on this queue.
        celery_worker "${GATEHOUSE_PUBLISH_QUEUE:-publish}" 1 publisher
        run "$PYTHON" "${CELERY_ARGUMENTS[@]}" "$@"
        ;;
    beat)
        # The schedule lives in the database (django_celery_beat); --pidfile= writes no pidfile.
        run "$PYTHON" -m celery -A controlplane beat -l info \
            --scheduler django_celery_beat.schedulers:DatabaseScheduler --pidfile= "$@"
        ;;
    ingest)
        run "$PYTHON" manage.py ingest_usage "$@"
        ;;
    gateway)
        run "$PYTHON" -m gateway --host "${GATEWAY_HOST:-0.0.0.0}" --port "${GATEWAY_PORT:-8080}" \
            --workers "${GATEWAY_WORKERS:-1}" "$@"
        ;;
    migrate)
        run "$PYTHON" manage.py migrate --noinput "$@"
        ;;
    manage)
        run "$PYTHON" manage.py "$@"
        ;;
    *)
        echo "entrypoint: unknown command ${command}" >&2
        usage
        exit 64
        ;;
esac
