#!/usr/bin/env bash
# A/B of the local artifact store's streaming: for each `nexus` binary given, in alternating
# rounds, a fresh `nexus registry`, a 1 GiB upload (curl -T) then its download (curl -o),
# checked with cmp, with the wall time and the server's CPU time of each; `cp` + `sync` of the
# same file at the end for scale. Build the two binaries from the two commits first.
#
#   bash benches/registry/artifact_ab.sh /tmp/nexus-before /tmp/nexus-after   (ROUNDS=3 SIZE_MIB=1024)
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
W=$(mktemp -d /tmp/artab.XXXX)
head -c $((SIZE_MIB<<20)) /dev/urandom > $W/big.bin
clk=$(getconf CLK_TCK)
cpu() { awk -v c=$clk '{print ($14+$15)/c}' /proc/$1/stat; }
for r in $(seq $ROUNDS); do
  i=0
  for bin in "$@"; do
    i=$((i+1)); port=$((46000+i))
    rm -rf $W/d$i; mkdir -p $W/d$i
    $bin registry --address 127.0.0.1 --port $port --data-dir $W/d$i > $W/log$i 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf localhost:$port/health >/dev/null 2>&1 && break; curl -s localhost:$port/ >/dev/null 2>&1 && break; sleep 0.1; done
    url=http://127.0.0.1:$port/api/2.0/mlflow-artifacts/artifacts/bench/x/big.bin
    sync; c0=$(cpu $pid); t0=$(date +%s.%N)
    curl -sf -T $W/big.bin -X PUT -H 'Expect:' $url >/dev/null
    t1=$(date +%s.%N); c1=$(cpu $pid)
    sync; t2=$(date +%s.%N)
    curl -sf -o $W/dl.bin $url
    t3=$(date +%s.%N); c2=$(cpu $pid)
    cmp -s $W/big.bin $W/dl.bin || echo "MISMATCH $bin"
    printf "round %d %-20s upload %.2fs cpu %.2fs | download %.2fs cpu %.2fs\n" $r $(basename $bin) $(echo "$t1-$t0"|bc) $(echo "$c1-$c0"|bc) $(echo "$t3-$t2"|bc) $(echo "$c2-$c1"|bc)
    kill $pid; wait $pid 2>/dev/null || true
    rm -f $W/dl.bin
  done
done
t0=$(date +%s.%N); cp $W/big.bin $W/cp.bin; sync $W/cp.bin; t1=$(date +%s.%N)
printf "cp+sync %.2fs\n" $(echo "$t1-$t0"|bc)
rm -rf $W
