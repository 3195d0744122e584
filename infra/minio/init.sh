#!/bin/sh
# One-shot set-up of the MinIO that stands in for partner S3 (service "minio-init"):
# the two demo buckets, a read-only policy, and the user imaging-sync signs with.
# Idempotent: a second run changes nothing. Needs MINIO_ROOT_USER, MINIO_ROOT_PASSWORD,
# S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY (from .env); MINIO_URL defaults to http://minio:9000.
set -eu

: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set (see .env.example)}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set (see .env.example)}"
: "${S3_ACCESS_KEY_ID:?S3_ACCESS_KEY_ID is not set (see .env.example)}"
: "${S3_SECRET_ACCESS_KEY:?S3_SECRET_ACCESS_KEY is not set (see .env.example)}"
MINIO_URL="${MINIO_URL:-http://minio:9000}"
BUCKETS="${MINIO_BUCKETS:-demo-dicom demo-archive}"
POLICY_FILE="${MINIO_POLICY_FILE:-/minio/imaging-sync-read.json}"

echo "minio-init: waiting for ${MINIO_URL}"
tries=0
until mc alias set local "${MINIO_URL}" "${MINIO_ROOT_USER}" "${MINIO_ROOT_PASSWORD}" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "${tries}" -ge 30 ]; then
    echo "minio-init: ${MINIO_URL} did not accept the root credentials after 30 tries" >&2
    exit 1
  fi
  sleep 2
done

for bucket in ${BUCKETS}; do
  mc mb --ignore-existing "local/${bucket}"
done

# Read-only for the service: GetObject (presigned URLs, C-MOVE) and ListBucket
# (HeadBucket in `imaging-sync doctor`; a 404 rather than a 403 for a missing object).
mc admin policy create local imaging-sync-read "${POLICY_FILE}"
mc admin user add local "${S3_ACCESS_KEY_ID}" "${S3_SECRET_ACCESS_KEY}"
# attach answers an error when the policy is already attached: that is the state we want.
mc admin policy attach local imaging-sync-read --user "${S3_ACCESS_KEY_ID}" 2>/dev/null \
  || echo "minio-init: policy imaging-sync-read already attached to ${S3_ACCESS_KEY_ID}"

echo "minio-init: buckets ${BUCKETS} ready; user ${S3_ACCESS_KEY_ID} has policy imaging-sync-read"
