#!/bin/sh
# render-acl.sh TEMPLATE OUT: users.acl with the passwords from REDIS_API_PASSWORD and
# REDIS_WORKER_PASSWORD. They also go into redis:// URLs, so only URL-safe characters are allowed
# (which also keeps them safe inside the sed expressions below). Redis refuses comments in an ACL
# file, so the template's comments and blank lines are dropped here.
set -eu
template=$1
out=$2
for name in REDIS_API_PASSWORD REDIS_WORKER_PASSWORD; do
    eval "value=\${$name:-}"
    case $value in
        '' | *[!A-Za-z0-9._~-]*)
            echo "render-acl: $name must be set, using only A-Z a-z 0-9 . _ ~ -" >&2
            exit 1
            ;;
    esac
done
umask 077
sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' \
    -e "s/%API_PASSWORD%/$REDIS_API_PASSWORD/" -e "s/%WORKER_PASSWORD%/$REDIS_WORKER_PASSWORD/" \
    "$template" >"$out"
