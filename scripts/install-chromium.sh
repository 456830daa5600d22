#!/usr/bin/env bash
# Install Debian's chromium for the report's real-browser test. Only tried as root with apt (as in
# CI); elsewhere, or if apt fails, that test is skipped with its reason rather than failing all.
set -uo pipefail
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-chromium: not root or no apt-get; the browser test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
then
    echo "install-chromium: apt-get failed; the browser test will be skipped" >&2
fi
exit 0
