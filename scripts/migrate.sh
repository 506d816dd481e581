#!/usr/bin/env bash
# Applies the database migrations (`spot-canvas migrate up`; they are embedded in the binary).
#
# Default: as the Cloud Run job spot-canvas-migrate, created or updated with the image about to be
# deployed, the Cloud SQL instance and the DATABASE_URL secret, then executed and waited for. The
# Cloud Run services run with MIGRATE_ON_START=false, so this runs before scripts/deploy.sh.
#
# --local: against the local DATABASE_URL (the environment, or .env in the checkout) with the
# checkout's binary, the one on PATH, or `cargo run --release`.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/migrate.sh [--dry-run] [--project PROJECT_ID] [--region REGION]
                          [--instance INSTANCE] [--image IMAGE | --tag TAG]
       scripts/migrate.sh --local

Cloud Run job (default):
  PROJECT_ID       Google Cloud project                  (env PROJECT_ID or --project)
  REGION           Cloud Run and Cloud SQL region        (env REGION or --region)
  INSTANCE         Cloud SQL instance name               (env INSTANCE or --instance)
  IMAGE            container image                       (env IMAGE or --image), or
                   REGION-docker.pkg.dev/PROJECT_ID/spot-canvas/spot-canvas:TAG from TAG
                   (env TAG or --tag)
  SERVICE_ACCOUNT  the job's service account             (env; default
                   spot-canvas@PROJECT_ID.iam.gserviceaccount.com)
  The job reads DATABASE_URL from the Secret Manager secret spot-canvas-database-url.

  --dry-run    print the gcloud commands instead of running them
  --local      run `spot-canvas migrate up` here, against DATABASE_URL (environment or .env;
               unset: the embedded database under DATA_DIR)
  -h, --help   this message
USAGE
}

say() { printf 'migrate: %s\n' "$*" >&2; }
die() {
  say "ERROR: $*"
  exit 1
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
job=spot-canvas-migrate
secret=spot-canvas-database-url
dry_run=false
local_run=false

need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then
    die "$1 needs a value (see --help)"
  fi
}
while [ "$#" -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=true ;;
    --local) local_run=true ;;
    --project) need_value "$@"; PROJECT_ID="$2"; shift ;;
    --region) need_value "$@"; REGION="$2"; shift ;;
    --instance) need_value "$@"; INSTANCE="$2"; shift ;;
    --image) need_value "$@"; IMAGE="$2"; shift ;;
    --tag) need_value "$@"; TAG="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

# Prints the command (--dry-run) or runs it.
run() {
  if [ "$dry_run" = true ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

if [ "$local_run" = true ]; then
  # From the checkout, so that the binary reads its .env.
  cd "$root"
  if [ -z "${DATABASE_URL:-}" ]; then
    say "DATABASE_URL is not set in the environment: the binary takes it from .env, or migrates the embedded database"
  fi
  if [ -x "$root/target/release/spot-canvas" ]; then
    run "$root/target/release/spot-canvas" migrate up
  elif command -v spot-canvas >/dev/null 2>&1; then
    run spot-canvas migrate up
  else
    command -v cargo >/dev/null 2>&1 || die "no spot-canvas binary and no cargo to build one"
    run cargo run --release --locked -- migrate up
  fi
  exit 0
fi

missing=()
[ -n "${PROJECT_ID:-}" ] || missing+=(PROJECT_ID)
[ -n "${REGION:-}" ] || missing+=(REGION)
[ -n "${INSTANCE:-}" ] || missing+=(INSTANCE)
[ -n "${IMAGE:-}" ] || [ -n "${TAG:-}" ] || missing+=("IMAGE or TAG")
if [ "${#missing[@]}" -gt 0 ]; then
  usage >&2
  die "missing: ${missing[*]}"
fi
IMAGE="${IMAGE:-$REGION-docker.pkg.dev/$PROJECT_ID/spot-canvas/spot-canvas:$TAG}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-spot-canvas@$PROJECT_ID.iam.gserviceaccount.com}"

if [ "$dry_run" = false ]; then
  command -v gcloud >/dev/null 2>&1 || die "gcloud is not installed (https://cloud.google.com/sdk)"
fi

say "updating the Cloud Run job $job (image $IMAGE)"
# `jobs deploy` creates the job or updates it. One task, no retries: a failed migration must
# stop the deploy, not run again on its own.
run gcloud run jobs deploy "$job" \
  --project "$PROJECT_ID" \
  --region "$REGION" \
  --image "$IMAGE" \
  --args migrate,up \
  --set-cloudsql-instances "$PROJECT_ID:$REGION:$INSTANCE" \
  --set-secrets "DATABASE_URL=$secret:latest" \
  --set-env-vars LOG_FORMAT=json,DATA_DIR=/tmp/spot-canvas \
  --service-account "$SERVICE_ACCOUNT" \
  --tasks 1 \
  --max-retries 0 \
  --task-timeout 10m \
  --quiet

say "executing $job and waiting for it"
run gcloud run jobs execute "$job" \
  --project "$PROJECT_ID" \
  --region "$REGION" \
  --wait \
  --quiet
[ "$dry_run" = true ] || say "migrations applied"
