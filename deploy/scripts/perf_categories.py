#!/usr/bin/env python3
"""Groups a `perf record` profile's samples by what the time went to (model
compute, HTTP/2, protobuf, the tensor codec, the tokio runtime, allocation and
copies, tracing/metrics, the kernel) by symbol name; used by lean_path.sh.
Usage: perf_categories.py PERF.DATA..."""
import subprocess, sys, re, collections
def cats(path):
    out = subprocess.run(["perf","report","-i",path,"--no-children","--sort","dso,sym","--stdio","-g","none"],capture_output=True,text=True).stdout
    c=collections.Counter(); total=0
    for line in out.splitlines():
        m=re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)",line)
        if not m: continue
        pct=float(m.group(1)); dso=m.group(2); kind=m.group(3); sym=m.group(4)
        total+=pct
        s=sym
        if kind=='k' or dso.startswith('[kernel'): k='kernel (syscalls, TCP, scheduling)'
        elif re.search(r'pulp|gemm|candle|offramp_common::model|conv|matmul|kernels',s): k='model compute'
        elif re.search(r'h2::|hyper::|http::|tonic::transport|tower',s): k='HTTP/2 (h2, hyper, tonic)'
        elif re.search(r'prost|encode_raw|merge_field|decode_varint|encoded_len',s): k='protobuf'
        elif re.search(r'codec::|lz4',s): k='tensor codec'
        elif re.search(r'tokio::|parking|futex|mio::',s): k='tokio runtime, wake-ups'
        elif re.search(r'malloc|free|realloc|alloc::|memcpy|memmove|memset|_int_',s): k='allocation, copies'
        elif re.search(r'tracing|metrics',s): k='tracing, metrics'
        else: k='other'
        c[k]+=pct
    return c,total
def threads(path):
    out = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "comm", "--stdio", "-g", "none"],
                         capture_output=True, text=True).stdout
    return [l.strip() for l in out.splitlines() if re.match(r"\s*[\d.]+%", l)]


for p in sys.argv[1:]:
    print("  by thread: " + ", ".join(threads(p)))
    c, t = cats(p)
    for k, v in c.most_common():
        print("  %-38s %5.1f%%" % (k, v))
