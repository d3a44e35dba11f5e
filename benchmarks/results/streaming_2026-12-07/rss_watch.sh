#!/bin/bash
# log VmRSS/VmHWM of the running cat_apps.quantize every 0.5 s
pid=$1; out=$2
while kill -0 $pid 2>/dev/null; do
  echo "$(date -u +%T) $(grep -E 'VmRSS|VmHWM' /proc/$pid/status | awk '{printf "%s %d ", $1, $2/1024}')" >> $out
  sleep 0.5
done
