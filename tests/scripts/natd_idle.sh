#!/bin/bash
# How often an idle natd wakes: its threads' context switches a second and
# its CPU ticks over 20 s, in a bare gateway namespace of its own (two veth
# peers, no traffic), removed on exit. Root.
# Usage: tests/scripts/natd_idle.sh target/release/natd
set -u
natd=$1; tag=idl$$
ip netns add ${tag}gw; ip netns add ${tag}l; ip netns add ${tag}w
cleanup() { [ -n "${pid:-}" ] && kill -INT $pid 2>/dev/null; sleep 1; ip netns del ${tag}gw; ip netns del ${tag}l; ip netns del ${tag}w; }
trap cleanup EXIT
ip -n ${tag}gw link add lan0 type veth peer name eth0 netns ${tag}l
ip -n ${tag}gw link add wan0 type veth peer name eth0 netns ${tag}w
ip -n ${tag}gw addr add 10.77.1.1/24 dev lan0; ip -n ${tag}gw addr add 203.0.113.1/24 dev wan0
ip -n ${tag}l addr add 10.77.1.10/24 dev eth0; ip -n ${tag}w addr add 203.0.113.2/24 dev eth0
for n in gw l w; do ip -n ${tag}$n link set lo up; done
ip -n ${tag}gw link set lan0 up; ip -n ${tag}gw link set wan0 up; ip -n ${tag}l link set eth0 up; ip -n ${tag}w link set eth0 up
ip netns exec ${tag}gw $natd run --lan lan0 --wan wan0 --log-level warn >/tmp/${tag}.log 2>&1 &
pid=$!
sleep 6
read_stats() { awk '/voluntary_ctxt_switches/ {s+=$2} END {print s}' /proc/$pid/status; }
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
c0=$(read_stats); t0=$(cpu)
# natd's threads: sum over tasks
w0=$(cat /proc/$pid/task/*/status | awk '/voluntary_ctxt_switches/ {s+=$2} END {print s}')
sleep 20
w1=$(cat /proc/$pid/task/*/status | awk '/voluntary_ctxt_switches/ {s+=$2} END {print s}')
t1=$(cpu)
echo "natd $natd: $(( (w1-w0) / 20 )) context switches/s over its threads, $(( t1-t0 )) ticks of CPU in 20 s"
