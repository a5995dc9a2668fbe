#!/usr/bin/env bash
# Start the backfill / reindex state machine of a deployed stack and print its progress until
# it ends (make backfill ENV=... PREFIX=..., make reindex-aws ENV=... VERSION=...).
#   infra/run_backfill.sh ENV MODE PREFIX [VERSION]
# Needs the AWS CLI with credentials for the stack's account. Exit 0 when the execution
# SUCCEEDED (a reindex: the version was switched), 1 otherwise.
set -euo pipefail
env_name=$1 mode=$2 prefix=$3 version=${4:-}
poll_s=${POLL_S:-15}
# Keys and versions are ours (content hashes, version names): refuse anything that would need
# JSON escaping rather than escape it.
[[ $prefix =~ ^[A-Za-z0-9/_.=+-]*$ && $version =~ ^[A-Za-z0-9_.-]*$ ]] || {
  echo "backfill: PREFIX and VERSION may hold letters, digits and / _ . = + - only" >&2; exit 2; }
machine=$(aws cloudformation describe-stacks --stack-name "ArtLens-$env_name" \
  --query "Stacks[0].Outputs[?OutputKey=='BackfillStateMachineArn'].OutputValue" --output text)
[[ -n $version ]] && version_json="\"$version\"" || version_json=null
input="{\"mode\":\"$mode\",\"prefix\":\"$prefix\",\"version\":$version_json}"
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
    echo "$status: listing $prefix"
  fi
  case $status in
    RUNNING|PENDING_REDRIVE) sleep "$poll_s" ;;
    SUCCEEDED) echo "done: results under backfill-results/ in the artifacts bucket"; exit 0 ;;
    *) aws stepfunctions describe-execution --execution-arn "$execution" \
         --query '[status,error,cause]' --output text >&2; exit 1 ;;
  esac
done
