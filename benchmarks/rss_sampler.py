"""Sample a running cat-quantize process RSS every 0.1 s and py-spy-dump its stack above a threshold (MiB):
python benchmarks/rss_sampler.py THRESHOLD_MIB LOG [PGREP_PATTERN] (py-spy from /tmp/pyspy: python -m venv
/tmp/pyspy && /tmp/pyspy/bin/pip install py-spy). Used for streaming_2026-12-06/07."""
import sys,time,subprocess,glob
# follow the cat_apps.quantize process: log RSS steps, stack dumps above a threshold
thr=int(sys.argv[1]); log=open(sys.argv[2],"w",buffering=1)
pattern=sys.argv[3] if len(sys.argv)>3 else "^python -m cat_apps.quantize /tmp/r8b"
pid=None
while pid is None:
    out=subprocess.run(["pgrep","-f",pattern],capture_output=True,text=True).stdout.split()
    pid=out[0] if out else None; time.sleep(0.5)
last=0; dumps=0; mx=0
while True:
    try: s=open(f"/proc/{pid}/status").read()
    except FileNotFoundError: break
    if "VmRSS:" not in s: break  # exiting (a zombie has no memory lines)
    rss=int(s.split("VmRSS:")[1].split()[0])//1024
    if rss>mx: mx=rss
    if abs(rss-last)>200: log.write(f"{time.strftime('%H:%M:%S')} {rss}\n"); last=rss
    if rss>thr and dumps<12:
        out=subprocess.run(["/tmp/pyspy/bin/py-spy","dump","--pid",pid],capture_output=True,text=True).stdout
        log.write(f"DUMP rss={rss}\n"+"\n".join(l for l in out.splitlines() if "cat_" in l)+"\n"); dumps+=1; time.sleep(2)
    time.sleep(0.1)
log.write(f"max sampled {mx}\n")
