#!/usr/bin/env bash
# Deploys the Cloud Run services defined in deploy/*.yaml (Knative YAML): renders each file with
# its placeholders replaced into a temporary directory, then `gcloud run services replace` each
# one, the ingest shards (deploy/ingest-*.yaml) first, then the rest (the web role). Each replace
# waits until the new revision is ready. Before that it creates or updates the Secret Manager
# secret spot-canvas-rungmp-config from deploy/prometheus/rungmp-config.yaml (the config of the
# metrics sidecar every service mounts). Run scripts/migrate.sh before it.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/deploy.sh [--dry-run] [--project PROJECT_ID] [--region REGION]
                         [--instance INSTANCE] [--image IMAGE | --tag TAG]
                         [--network VPC_NETWORK] [--subnet VPC_SUBNET]

Replaces these placeholders in every deploy/*.yaml and deploys the result:
  PROJECT_ID   Google Cloud project                       (env PROJECT_ID or --project)
  REGION       Cloud Run and Cloud SQL region             (env REGION or --region)
  INSTANCE     Cloud SQL instance name                    (env INSTANCE or --instance)
  IMAGE        container image                            (env IMAGE or --image), or
               REGION-docker.pkg.dev/PROJECT_ID/spot-canvas/spot-canvas:TAG from TAG
               (env TAG or --tag)
  VPC_NETWORK  VPC network for direct VPC egress to NATS  (env VPC_NETWORK or --network; default "default")
  VPC_SUBNET   its subnet                                 (env VPC_SUBNET or --subnet; default "default")

Before deploying it creates the secret spot-canvas-rungmp-config if missing and adds
deploy/prometheus/rungmp-config.yaml as its new version (unless the latest holds it already).

  --dry-run    print the rendered YAML (one multi-document stream) instead of calling gcloud;
               the secret's gcloud commands are printed to stderr
  -h, --help   this message
USAGE
}

say() { printf 'deploy: %s\n' "$*" >&2; }
die() {
  say "ERROR: $*"
  exit 1
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deploy_dir="$root/deploy"
# The metrics sidecar's RunMonitoring config, mounted by every service from this secret.
rungmp_secret=spot-canvas-rungmp-config
rungmp_config="$deploy_dir/prometheus/rungmp-config.yaml"
dry_run=false

need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then
    die "$1 needs a value (see --help)"
  fi
}
while [ "$#" -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=true ;;
    --project) need_value "$@"; PROJECT_ID="$2"; shift ;;
    --region) need_value "$@"; REGION="$2"; shift ;;
    --instance) need_value "$@"; INSTANCE="$2"; shift ;;
    --image) need_value "$@"; IMAGE="$2"; shift ;;
    --tag) need_value "$@"; TAG="$2"; shift ;;
    --network) need_value "$@"; VPC_NETWORK="$2"; shift ;;
    --subnet) need_value "$@"; VPC_SUBNET="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

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
VPC_NETWORK="${VPC_NETWORK:-default}"
VPC_SUBNET="${VPC_SUBNET:-default}"

# The values go into YAML unquoted: allow only what project ids, regions, instance, network and
# image names are made of.
for name in PROJECT_ID REGION INSTANCE IMAGE VPC_NETWORK VPC_SUBNET; do
  [[ "${!name}" =~ ^[A-Za-z0-9._:/@-]+$ ]] || die "$name has characters a name cannot have: ${!name}"
done

shopt -s nullglob
ingest=("$deploy_dir"/ingest-*.yaml)
others=()
for file in "$deploy_dir"/*.yaml; do
  case "$(basename "$file")" in ingest-*.yaml) ;; *) others+=("$file") ;; esac
done
files=("${ingest[@]}" "${others[@]}")
[ "${#files[@]}" -gt 0 ] || die "no service definitions in $deploy_dir"
[ -f "$rungmp_config" ] || die "no sidecar config at $rungmp_config"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/spot-canvas-deploy.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Replaces the placeholders (quoted replacements: no pattern characters, no `&` expansion).
render() {
  local text
  text="$(<"$1")"
  text="${text//IMAGE/"$IMAGE"}"
  text="${text//PROJECT_ID/"$PROJECT_ID"}"
  text="${text//REGION/"$REGION"}"
  text="${text//INSTANCE/"$INSTANCE"}"
  text="${text//VPC_NETWORK/"$VPC_NETWORK"}"
  text="${text//VPC_SUBNET/"$VPC_SUBNET"}"
  printf '%s\n' "$text"
}

rendered=()
for file in "${files[@]}"; do
  out="$tmp/$(basename "$file")"
  render "$file" >"$out"
  # A placeholder left outside the comments means the file names one this script does not know.
  if grep -v '^[[:space:]]*#' "$out" | grep -Eq '\b(PROJECT_ID|REGION|INSTANCE|IMAGE|VPC_NETWORK|VPC_SUBNET)\b'; then
    die "$(basename "$file"): a placeholder is left after rendering"
  fi
  rendered+=("$out")
done

if [ "$dry_run" = true ]; then
  say "dry run: would run, before the services:"
  say "  gcloud secrets describe $rungmp_secret --project $PROJECT_ID ||" \
    "gcloud secrets create $rungmp_secret --project $PROJECT_ID --replication-policy automatic"
  say "  gcloud secrets versions add $rungmp_secret --project $PROJECT_ID" \
    "--data-file deploy/prometheus/rungmp-config.yaml (unless the latest version holds it already)"
  for out in "${rendered[@]}"; do
    printf -- '---\n# rendered from deploy/%s\n' "$(basename "$out")"
    cat "$out"
  done
  exit 0
fi

command -v gcloud >/dev/null 2>&1 || die "gcloud is not installed (https://cloud.google.com/sdk)"

# The sidecar's config first: the new revisions mount the secret's latest version.
if ! gcloud secrets describe "$rungmp_secret" --project "$PROJECT_ID" >/dev/null 2>&1; then
  say "creating the secret $rungmp_secret"
  gcloud secrets create "$rungmp_secret" --project "$PROJECT_ID" \
    --replication-policy automatic --quiet
fi
if cmp -s "$rungmp_config" \
  <(gcloud secrets versions access latest --secret "$rungmp_secret" --project "$PROJECT_ID" 2>/dev/null); then
  say "the secret $rungmp_secret already holds deploy/prometheus/rungmp-config.yaml"
else
  say "adding deploy/prometheus/rungmp-config.yaml as a new version of the secret $rungmp_secret"
  gcloud secrets versions add "$rungmp_secret" --project "$PROJECT_ID" \
    --data-file "$rungmp_config" --quiet
fi

for out in "${rendered[@]}"; do
  say "replacing the service of deploy/$(basename "$out") (image $IMAGE)"
  gcloud run services replace "$out" --project "$PROJECT_ID" --region "$REGION" --quiet
done
say "deployed ${#rendered[@]} services to $PROJECT_ID/$REGION"
