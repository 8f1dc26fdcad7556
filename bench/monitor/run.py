"""How fast task priority reacts: `python -m bench.monitor.run` (after `make libvgpu`).

A simulated node (libvgpu's fake driver, `hami monitor` as its own process) with two
containers on one GPU: a priority-1 task that launches a kernel every millisecond and
logs when each launch returns, and a priority-0 task that, in each trial, launches every
2 ms for `--busy` seconds, then rests. Per trial:

- stop: from the high-priority task's first launch to the last low-priority launch that
  got through before the pause (target: under 200 ms);
- resume: from the high-priority task's last launch to the first low-priority launch after
  the pause (target: under 1 s; the monitor's priority window, 0.5 s by default, is most of it).

Prints the figures per trial and their median and maximum.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.monitor.simnode import Gpu, SimNode, stop_process
from tests.cluster import free_port


def _times(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def measure(low_log: Path, high_log: Path, start_ns: int, end_ns: int | None = None) -> tuple[float, float] | None:
    """(stop ms, resume ms) for one trial whose high-priority launches started after start_ns
    (and the next trial's after end_ns). Read the logs once their writers are done: they are buffered."""
    end = end_ns or 2**63
    high = [t for t in _times(high_log) if start_ns <= t < end]
    # From a little before: the last low-priority launch before the pause may precede start_ns.
    low = [t for t in _times(low_log) if start_ns - 300_000_000 <= t < end]
    if not high or len(low) < 2:
        return None
    first, last = high[0], high[-1]
    gaps = [(low[i + 1] - low[i], i) for i in range(len(low) - 1) if low[i + 1] > first]
    if not gaps:
        return None
    _, i = max(gaps)
    return (low[i] - first) / 1e6, (low[i + 1] - last) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--busy", type=float, default=1.0, help="seconds the high-priority task launches per trial")
    parser.add_argument("--rest", type=float, default=1.5, help="seconds between trials")
    parser.add_argument("--window", type=float, default=0.5, help="the monitor's --priority-window")
    parser.add_argument("--monitor-log", type=Path, help="keep the monitor's log in this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hami-bench-monitor-") as tmp:
        node = SimNode(Path(tmp), gpus=1)
        low_pod = node.add_pod("train", {"train": [Gpu(0, 4000, 0)]})
        high_pod = node.add_pod("serve", {"serve": [Gpu(0, 4000, 0)]})
        port = free_port()
        monitor = node.start_monitor("--pods", str(node.pods_file()), "--metrics-bind-address",
                                     f"127.0.0.1:{port}", "--priority-window", str(args.window),
                                     log=args.monitor_log)
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            low = node.start(low_pod, "train", priority=1)
            high = node.start(high_pod, "serve", priority=0)
            low_log, high_log = Path(tmp) / "low.log", Path(tmp) / "high.log"
            total = args.trials * (args.busy + args.rest) + 2
            low.start(f"launch-log {low_log} {total} 1000")
            time.sleep(1.0)
            starts = []
            for _ in range(args.trials):
                starts.append(time.time_ns())
                high.send(f"launch-log {high_log} {args.busy} 2000")
                time.sleep(args.rest)
            low.answer()  # its log is complete once its launch command is done
            results = []
            ends = [*starts[1:], time.time_ns()]
            for trial, (start, end) in enumerate(zip(starts, ends, strict=True)):
                result = measure(low_log, high_log, start, end)
                if result is None:
                    print(f"trial {trial + 1}: no pause seen")
                    continue
                results.append(result)
                print(f"trial {trial + 1}: stop {result[0]:7.1f} ms   resume {result[1]:7.1f} ms")
        finally:
            node.close()
            stop_process(monitor)
    if not results:
        print("no trial measured")
        return 1
    stops, resumes = [r[0] for r in results], [r[1] for r in results]
    print(f"\n{len(results)} trials, window {args.window} s")
    print(f"stop   (target < 200 ms): median {statistics.median(stops):7.1f} ms   max {max(stops):7.1f} ms")
    print(f"resume (target < 1000 ms): median {statistics.median(resumes):7.1f} ms   max {max(resumes):7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
