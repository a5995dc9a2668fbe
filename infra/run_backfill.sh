#!/usr/bin/env bash
# Start the backfill / reindex / renditions state machine of a deployed stack and print its
# progress until it ends (make backfill ENV=... PREFIX=... [MANIFEST=...], make reindex-aws
# ENV=... VERSION=..., make renditions ENV=... [PREFIX=gallery/...]).
#   [MANIFEST=s3://BUCKET/KEY | MANIFEST=latest] infra/run_backfill.sh ENV MODE [PREFIX [VERSION]]
# MODE: backfill (PREFIX default incoming/), reindex or renditions (default gallery/).
# renditions writes the missing renditions of works indexed before ingest wrote them; it takes
# no VERSION.
# MANIFEST: read the items from an S3 Inventory report instead of listing PREFIX (millions of
# objects; docs/operations.md). s3://<artifacts bucket>/inventory/.../manifest.json names one;
# `latest` takes the newest report of the images bucket's incoming (backfill) or gallery
# (reindex, renditions) inventory. Only keys under PREFIX are processed either way.
# Needs the AWS CLI with credentials for the stack's account. Exit 0 when the execution
# SUCCEEDED (a reindex: the version was switched), 1 otherwise.
set -euo pipefail
env_name=$1 mode=$2 prefix=${3:-} version=${4:-}
case $mode in
  backfill) prefix=${prefix:-incoming/} ;;
  reindex) prefix=${prefix:-gallery/} ;;
  renditions)
    prefix=${prefix:-gallery/}
    [[ -z $version ]] || { echo "backfill: renditions take no VERSION" >&2; exit 2; } ;;
  *) echo "backfill: MODE must be backfill, reindex or renditions" >&2; exit 2 ;;
esac
manifest=${MANIFEST:-}
poll_s=${POLL_S:-15}
stack="ArtLens-$env_name"
# Keys and versions are ours (content hashes, version names): refuse anything that would need
# JSON escaping rather than escape it.
[[ $prefix =~ ^[A-Za-z0-9/_.=+-]*$ && $version =~ ^[A-Za-z0-9_.-]*$ ]] || {
  echo "backfill: PREFIX and VERSION may hold letters, digits and / _ . = + - only" >&2; exit 2; }
output() {
  aws cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}
machine=$(output BackfillStateMachineArn)
[[ -n $version ]] && version_json="\"$version\"" || version_json=null
manifest_json=
if [[ $manifest == latest ]]; then
  # S3 writes inventory/<images bucket>/<configuration id>/<YYYY-MM-DDTHH-MMZ>/manifest.json:
  # the dated folder names sort in time order.
  artifacts=$(output ArtifactsBucketName) images=$(output ImagesBucketName)
  [[ $mode == backfill ]] && inventory=incoming || inventory=gallery
  key=$(aws s3api list-objects-v2 --bucket "$artifacts" \
          --prefix "inventory/$images/$inventory/" --output text \
          --query "Contents[?ends_with(Key, '/manifest.json')].Key | sort(@ || \`[]\`) | [-1]")
  [[ -n $key && $key != None ]] || {
    echo "backfill: no inventory report under s3://$artifacts/inventory/$images/$inventory/" \
         "yet (S3 writes the first within 48 hours of deploying)" >&2; exit 2; }
  manifest="s3://$artifacts/$key"
fi
if [[ -n $manifest ]]; then
  [[ $manifest =~ ^s3://([a-z0-9.-]+)/([A-Za-z0-9/_.=+-]+/manifest\.json)$ ]] || {
    echo "backfill: MANIFEST must be s3://BUCKET/.../manifest.json (or latest)" >&2; exit 2; }
  manifest_json=",\"manifest\":{\"bucket\":\"${BASH_REMATCH[1]}\",\"key\":\"${BASH_REMATCH[2]}\"}"
fi
input="{\"mode\":\"$mode\",\"prefix\":\"$prefix\",\"version\":$version_json$manifest_json}"
execution=$(aws stepfunctions start-execution --state-machine-arn "$machine" --input "$input" \
  --query executionArn --output text)
echo "started $execution with $input"
while :; do
  status=$(aws stepfunctions describe-execution --execution-arn "$execution" \
    --query status --output text)
  map_run=$(aws stepfunctions list-map-runs --execution-arn "$execution" \
    --query 'mapRuns[0].mapRunArn' --output text)
  if [[ $map_run != None && -n $map_run ]]; then
    aws stepfunctions describe-map-run --map-run-arn "$map_run" --output text \
      --query 'itemCounts.[succeeded,failed,running,pending,total]' |
      awk -v s="$status" '{printf "%s: %s done, %s failed, %s running, %s pending of %s objects\n",
                             s, $1, $2, $3, $4, $5}'
  else
    [[ -n $manifest ]] && echo "$status: reading $manifest" || echo "$status: listing $prefix"
  fi
  case $status in
    RUNNING|PENDING_REDRIVE) sleep "$poll_s" ;;
    SUCCEEDED) echo "done: results under backfill-results/ in the artifacts bucket"; exit 0 ;;
    *) aws stepfunctions describe-execution --execution-arn "$execution" \
         --query '[status,error,cause]' --output text >&2; exit 1 ;;
  esac
done
