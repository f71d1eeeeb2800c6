#!/bin/sh
# hand-to-cape: hooks.on_complete that hands a finished sandfleet analysis to
# CAPE's processing (signatures, reports) on this host.
#
#   hooks:
#     on_complete: [/usr/local/bin/hand-to-cape, "{task_id}", "{analysis_dir}", "{status}"]
#     timeout: 900s
#
# CAPE processes storage/analyses/<id>/ under its root: the analysis folder is
# linked there, then utils/process.py -r <id> runs as CAPE runs it. Running it
# twice for one task is harmless (sandfleet runs a hook again when a crash
# interrupted it). Failed analyses are not processed.
#
# CAPE_ROOT: CAPE's installation (default /opt/CAPEv2).
# CAPE_PYTHON: how to run CAPE's Python (default "poetry run python", as
# CAPE's own services do; "python3" in a plain virtualenv).
set -eu
if [ $# -ne 3 ]; then
	echo "usage: hand-to-cape TASK_ID ANALYSIS_DIR STATUS" >&2
	exit 2
fi
task_id=$1 analysis_dir=$2 status=$3
root=${CAPE_ROOT:-/opt/CAPEv2}
python=${CAPE_PYTHON:-poetry run python}

case $task_id in
'' | *[!0-9]*) echo "hand-to-cape: task id \"$task_id\" is not a number" >&2; exit 2 ;;
esac
if [ "$status" != completed ]; then
	echo "task $task_id ended $status: nothing to process"
	exit 0
fi
if [ ! -d "$analysis_dir" ]; then
	echo "hand-to-cape: $analysis_dir is not a directory" >&2
	exit 1
fi
mkdir -p "$root/storage/analyses"
ln -sfn "$analysis_dir" "$root/storage/analyses/$task_id"
cd "$root"
# shellcheck disable=SC2086 # CAPE_PYTHON may be a command with arguments
exec $python utils/process.py -r "$task_id"
