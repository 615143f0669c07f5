#!/usr/bin/env python3
"""Split a controller CPU profile into the components BENCHMARKS.md names.

    perf record -F 299 --call-graph dwarf,16384 -p <acrpull pid> -- sleep 30
    perf script -F comm,tid,period,ip,sym > stacks.txt
    scripts/perf-components.py stacks.txt [cpu ms per binding]

Each sample goes to the component of its innermost frame that names one (an allocation, a
`memcmp` or a syscall counts for the code that made it). With the bench's CPU per binding
the shares are also printed in ms per binding.
"""
import collections
import re
import sys

COMPONENTS = [
    ("watch events: JSON decode", [r"kube_core::watch", r"WatchEvent", r"kube_runtime::watcher"]),
    ("acrpull: observe + decide", [r"acrpull::k8s::observe", r"acrpull::state::",
                                   r"BindingIndex::siblings", r"observe_now", r"decide_now",
                                   r"acrpull::k8s::status::render", r"acrpull::k8s::tracker",
                                   r"acrpull::k8s::reconcile::report", r"acrpull::k8s::tenancy",
                                   r"acrpull::k8s::pacing"]),
    ("acrpull: caches (watch events in, echoes)", [r"acrpull::k8s::cache", r"acrpull::k8s::written",
                                                   r"acrpull::k8s::trim", r"acrpull::k8s::run::",
                                                   r"acrpull::k8s::failures"]),
    ("Azure pipeline (reqwest)", [r"acrpull::azure", r"reqwest::"]),
    ("kube-client requests: build, send, parse the answer",
     [r"kube_client::client::Client::request", r"kube_client::api", r"acrpull::k8s::writer",
      r"acrpull::k8s::edits", r"acrpull::k8s::events", r"acrpull::k8s::pull_secret",
      r"acrpull::k8s::mint", r"send_request", r"hyper_util::client"]),
    ("HTTP/1.1 + TLS connections (hyper, rustls)", [r"hyper::proto", r"UpgradeableConnection",
                                                    r"tokio_rustls", r"rustls::", r"ring_core",
                                                    r"hyper_timeout"]),
    ("kube-runtime controller (queue, scheduler, store)",
     [r"kube_runtime::controller", r"kube_runtime::reflector", r"kube_runtime::scheduler",
      r"FutureHashMap", r"kube_runtime::utils"]),
    ("acrpull: the rest of the pass", [r"acrpull::k8s::reconcile", r"acrpull::"]),
    ("logging (tracing)", [r"tracing_subscriber", r"tracing_core", r"tracing::"]),
    ("tokio runtime, timers, wakeups", [r"tokio::runtime", r"tokio::time", r"epoll_wait", r"schedule"]),
]
PATTERNS = [(name, re.compile("|".join(p))) for name, p in COMPONENTS]


def component(frames):
    for frame in frames:
        for name, pattern in PATTERNS:
            if pattern.search(frame):
                return name
    return "other"


def samples(path):
    frames = []
    for line in open(path, errors="replace"):
        if not line.strip() or line[0] not in " \t":
            if frames:
                yield frames
            frames = []
            continue
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            frames.append(parts[1])
    if frames:
        yield frames


def main():
    counts = collections.Counter(component(f) for f in samples(sys.argv[1]))
    total = sum(counts.values())
    per_binding = float(sys.argv[2]) if len(sys.argv) > 2 else None
    for name, n in counts.most_common():
        ms = f"  {per_binding * n / total:.3f} ms/binding" if per_binding else ""
        print(f"{100 * n / total:5.1f} %  {name}{ms}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
